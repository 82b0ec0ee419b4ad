"""Texts to hashed n-gram counts for the lexical half, in several processes when there is much text.

Why a module of its own: scikit-learn's n-gram analyzer is Python, about 5 ms per 3,600-character
GitHub issue on one core, so on a GPU host hashing is the slowest part of fitting the lexical half and
of scoring a published model, while the host's other cores idle. Each worker is a fresh
``python -m retrainer.core.ngram_hashing`` that imports only this module (scikit-learn, not torch or
the caller's main module), reads its texts as JSON on stdin and writes the counts' arrays to stdout
(NumPy's format, no pickle). Nothing is forked from a process that may hold CUDA or threads. The
counts are the same as in one process, row for row.
"""

import io
import itertools
import json
import logging
import os
import subprocess
import sys

import numpy as np
from scipy.sparse import csr_matrix, vstack
from sklearn.feature_extraction.text import HashingVectorizer

ANALYZERS = {"word": ("word", (1, 2)), "char": ("char_wb", (2, 5))}
"""Feature groups: words and word pairs; character 2-5-grams within words (identifiers, error names)."""
HASH_BITS = 24
"""Buckets per feature group, 2**24: 1,350 GitHub issues hold ~1M distinct character n-grams, most in one
text; in fewer buckets, rare n-grams collide into buckets that pass the document-frequency minimum
(2**20: 165k kept against 143k distinct frequent n-grams, and 0.003 less macro-F1). Only kept buckets
are saved, so the space costs nothing on disk."""
PARALLEL_MIN_CHARACTERS = 2_000_000
"""Less text than this is hashed in this process (1,500 GitHub issues are ~5.5M characters, hashed in
~5 s on one core; 10,000 short tickets ~1M characters)."""
PARALLEL_MIN_CORES = 4
"""Fewer cores than this: hashed in this process. A worker starts in ~1-3 s (scikit-learn's import),
which two cores do not win back on the texts of one nightly run."""
MAX_WORKERS = 8
logger = logging.getLogger(__name__)


def hasher(name: str) -> HashingVectorizer:
    """The stateless hashing of feature group `name` (lower case, counts, no sign flipping)."""
    analyzer, ngram_range = ANALYZERS[name]
    return HashingVectorizer(
        analyzer=analyzer, ngram_range=ngram_range, n_features=2**HASH_BITS, alternate_sign=False, norm=None
    )


def hashed_counts(
    name: str, texts: list[str], min_characters: int = PARALLEL_MIN_CHARACTERS, workers: int | None = None
) -> csr_matrix:
    """The n-gram counts of `texts` for feature group `name`, one row per text, in order: hashed in
    `workers` processes (one contiguous chunk each; default: one per core up to `MAX_WORKERS` on
    machines with `PARALLEL_MIN_CORES` or more) when the texts hold `min_characters` or more. A worker
    that fails is reported and its work done here."""
    if workers is None:
        cores = len(os.sched_getaffinity(0))
        workers = min(MAX_WORKERS, cores) if cores >= PARALLEL_MIN_CORES else 1
    workers = min(workers, len(texts))
    if workers < 2 or sum(map(len, texts)) < min_characters:
        return hasher(name).transform(texts)
    chunks = [
        texts[start:end]
        for start, end in itertools.pairwise(np.linspace(0, len(texts), workers + 1).astype(int))
    ]
    # the workers find this package where this process found it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        for _ in chunks
    ]
    for worker, chunk in zip(started, chunks, strict=True):
        worker.stdin.write(json.dumps({"name": name, "texts": chunk}).encode())
        worker.stdin.close()
    return vstack(
        [_counts_from(worker, name, chunk) for worker, chunk in zip(started, chunks, strict=True)],
        format="csr",
    )


def _counts_from(worker: subprocess.Popen, name: str, chunk: list[str]) -> csr_matrix:
    output = worker.stdout.read()
    if worker.wait() != 0:
        logger.warning("n-gram hashing worker exited with %s; hashing its texts here", worker.returncode)
        return hasher(name).transform(chunk)
    arrays = np.load(io.BytesIO(output), allow_pickle=False)
    return csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))


def _serve() -> None:
    """A worker: texts as JSON on stdin, their counts' arrays on stdout."""
    job = json.loads(sys.stdin.buffer.read())
    counts = hasher(job["name"]).transform(job["texts"])
    buffer = io.BytesIO()
    np.savez(
        buffer, data=counts.data, indices=counts.indices, indptr=counts.indptr, shape=np.array(counts.shape)
    )
    sys.stdout.buffer.write(buffer.getvalue())


if __name__ == "__main__":
    _serve()
