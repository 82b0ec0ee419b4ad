"""The lexical half of a published model: TF-IDF n-grams and logistic regression, blended with the
fine-tuned transformer's probabilities.

Why: on GitHub issues the two err on different tickets (the transformer reads 128 tokens of cleaned
text; TF-IDF reads every word and character n-gram of the whole ticket, code and stack traces
included), so a blend of their probabilities beats either (docs/experiments/2026-11-27-lexical-half.md).

Why hashed: a model's files are published and immutable, so they must not carry customer data. The
n-grams are hashed into buckets and no n-gram string is saved; the text is masked first (the kinds the
model's input recipe masks, `retrainer.core.masking`); and a bucket seen in fewer than
`MIN_DOCUMENT_FREQUENCY` training tickets has no weight, so a string one customer wrote in one or two
tickets cannot move a prediction (docs/experiments/2026-12-01-lexical-privacy.md measured the cost).

Saved without pickle, beside the transformer: ``lexical.json`` (settings, blend weight, the
transformer's temperature, the masked kinds) and ``lexical.safetensors`` (the kept buckets, their
inverse document frequencies and the regression's weights). Models saved before hashing (format 1,
plain-text vocabularies, unmasked) still load and score as they always did.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from retrainer.core.calibration import soften
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.masking import Masker, MaskKind, mask_text
from retrainer.core.ngram_hashing import ANALYZERS, HASH_BITS, hashed_counts

logger = logging.getLogger(__name__)
SETTINGS_FILE = "lexical.json"
WEIGHTS_FILE = "lexical.safetensors"
FORMAT_VERSION = 2
VOCABULARY_FORMAT = 1
"""Models saved before hashing: plain-text vocabularies, unmasked text (loaded, never written)."""
INVERSE_REGULARISATION = 10.0
"""Logistic regression's C, the better of those measured (docs/experiments/2026-11-26-training-recipe-cpu.md,
the TF-IDF baseline)."""
MIN_DOCUMENT_FREQUENCY = 5
"""A bucket seen in fewer training texts than this has no weight: what one customer wrote in up to four
tickets cannot move a prediction. It cost no macro-F1 and kept far fewer features
(docs/experiments/2026-12-01-lexical-privacy.md)."""
MAX_FEATURES = 250_000
"""Per feature group, the buckets in most texts kept: bounds the saved model (~5 MB) as the curated
data grows."""


class MissingLabelsError(ValueError):
    """Some label has no training text, or no n-gram is shared by enough texts: a regression cannot
    learn."""


class NgramFeatures(Protocol):
    """One feature group: texts to a sparse TF-IDF matrix."""

    def transform(self, texts: list[str]) -> csr_matrix: ...


@dataclass
class HashedNgrams:
    """A feature group of hashed n-grams: only the kept buckets and their inverse document
    frequencies are known, never the n-grams themselves."""

    name: str
    columns: np.ndarray  # the kept buckets, ascending
    idf: np.ndarray  # per kept bucket

    def transform(self, texts: list[str]) -> csr_matrix:
        """Sub-linear TF times IDF over the kept buckets, each row of unit length (as TfidfVectorizer)."""
        return self.weighted(hashed_counts(self.name, texts))

    def weighted(self, counts: csr_matrix) -> csr_matrix:
        """The TF-IDF rows of hashed n-gram `counts`."""
        kept = self._kept(counts.tocsr())
        if not kept.shape[1]:
            return kept  # nothing kept (too few texts share an n-gram): no features to weigh
        kept.data = (1.0 + np.log(kept.data)) * self.idf[kept.indices]
        return _unit_rows(kept)

    def _kept(self, counts: csr_matrix) -> csr_matrix:
        """`counts[:, self.columns]`, by looking each stored entry up in the kept buckets: scipy's column
        indexing costs time in proportion to all 2**HASH_BITS columns, ~40 ms a call even for one text
        (what a service scoring one ticket a request pays), this in proportion to the entries."""
        position = np.searchsorted(self.columns, counts.indices)
        found = position < len(self.columns)
        found[found] = self.columns[position[found]] == counts.indices[found]
        kept_before = np.concatenate(([0], np.cumsum(found)))  # entries kept before each stored entry
        shape = (counts.shape[0], len(self.columns))
        return csr_matrix((counts.data[found], position[found], kept_before[counts.indptr]), shape=shape)


def _unit_rows(matrix: csr_matrix) -> csr_matrix:
    """`matrix` with each row of unit L2 length (rows of zeros left so), in place: what scikit-learn's
    `normalize` computes, to the bit (squares summed in row order, then divided by their root), without
    its ~0.5 ms of input checks a call, paid by every one-ticket request of the service."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    norms = np.sqrt(np.bincount(rows, weights=matrix.data**2, minlength=matrix.shape[0]))
    norms[norms == 0.0] = 1.0
    matrix.data /= norms[rows]
    return matrix


def fit_hashed_ngrams(name: str, texts: list[str]) -> tuple[HashedNgrams, csr_matrix]:
    """Feature group `name` fitted on `texts` (the buckets in at least `MIN_DOCUMENT_FREQUENCY` of
    them, at most `MAX_FEATURES`), and the texts' features from the same hashing pass."""
    counts = hashed_counts(name, texts)
    buckets, document_frequency = np.unique(counts.indices, return_counts=True)  # one entry per text
    frequent = document_frequency >= MIN_DOCUMENT_FREQUENCY
    buckets, document_frequency = buckets[frequent], document_frequency[frequent]
    if len(buckets) > MAX_FEATURES:
        most_common = np.sort(np.argsort(-document_frequency, kind="stable")[:MAX_FEATURES])
        buckets, document_frequency = buckets[most_common], document_frequency[most_common]
    # scikit-learn's smoothed IDF, so scores match a TfidfVectorizer's of the same n-grams
    idf = np.log((1 + len(texts)) / (1 + document_frequency)) + 1.0
    group = HashedNgrams(name, buckets.astype(np.int64), idf.astype(np.float32))
    return group, group.weighted(counts)


@dataclass
class LexicalModel:
    """Fitted TF-IDF feature groups and a logistic regression over their features."""

    vectorizers: dict[str, NgramFeatures]
    classifier_weights: np.ndarray  # (labels, features)
    classifier_bias: np.ndarray  # (labels,)
    labels: list[str]
    blend_weight: float
    transformer_temperature: float = 1.0
    """Divides the transformer's logits before blending (`retrainer.core.calibration`); 1: as they are."""
    mask: tuple[MaskKind, ...] = ()
    """Kinds of customer data masked before the n-grams are counted, in training and scoring alike."""

    def probabilities(self, texts: list[str], masker: Masker = mask_text) -> torch.Tensor:
        """Class probabilities per text, columns in `labels` order; the texts masked by `masker`."""
        if self.mask:
            texts = [masker(text, self.mask) for text in texts]
        logits = features(self.vectorizers, texts) @ self.classifier_weights.T + self.classifier_bias
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=-1)

    def blend(
        self, transformer_probabilities: torch.Tensor, lexical_probabilities: torch.Tensor
    ) -> torch.Tensor:
        """`blend_weight` of this model's probabilities (from `probabilities`) plus the rest of the
        transformer's at `transformer_temperature`, for the same texts."""
        return blend_probabilities(
            transformer_probabilities, lexical_probabilities, self.blend_weight, self.transformer_temperature
        )

    def feature_counts(self) -> dict[str, int]:
        """Features per group (kept buckets, or vocabulary entries of an old model)."""
        return {name: _feature_count(group) for name, group in self.vectorizers.items()}

    def save(self, model_dir: Path) -> None:
        """Write ``lexical.json`` and ``lexical.safetensors`` into `model_dir` (hashed groups only)."""
        groups = {name: group for name, group in self.vectorizers.items() if isinstance(group, HashedNgrams)}
        if len(groups) != len(self.vectorizers):
            raise ValueError("only hashed feature groups are saved; vocabulary models are read-only")
        settings = {
            "format": FORMAT_VERSION,
            "labels": self.labels,
            "blend_weight": self.blend_weight,
            "transformer_temperature": self.transformer_temperature,
            "mask": list(self.mask),
            "hash_bits": HASH_BITS,
            "groups": {
                name: {"analyzer": ANALYZERS[name][0], "ngram_range": ANALYZERS[name][1]} for name in groups
            },
        }
        (model_dir / SETTINGS_FILE).write_text(json.dumps(settings))
        tensors = {f"columns.{name}": group.columns for name, group in groups.items()}
        tensors |= {f"idf.{name}": group.idf for name, group in groups.items()}
        tensors |= {"classifier.weight": self.classifier_weights, "classifier.bias": self.classifier_bias}
        # safetensors writes memory order: a column-major array (as scikit-learn returns) would be scrambled
        save_file(
            {key: np.ascontiguousarray(value) for key, value in tensors.items()},
            str(model_dir / WEIGHTS_FILE),
        )

    @classmethod
    def load(cls, model_dir: Path) -> "LexicalModel | None":
        """The lexical model saved in `model_dir`; None when it has none (a transformer alone)."""
        if not (model_dir / SETTINGS_FILE).exists():
            return None
        settings = json.loads((model_dir / SETTINGS_FILE).read_text())
        tensors = load_file(str(model_dir / WEIGHTS_FILE))
        if settings.get("format") == FORMAT_VERSION:
            _check_hashing(settings, model_dir)
            groups = {
                name: HashedNgrams(name, tensors[f"columns.{name}"], tensors[f"idf.{name}"])
                for name in settings["groups"]
            }
        elif settings.get("format") == VOCABULARY_FORMAT:
            groups = _vocabulary_groups(settings["vocabularies"], tensors)
        else:
            raise ValueError(f"{model_dir / SETTINGS_FILE}: unknown format {settings.get('format')!r}")
        return cls(
            vectorizers=groups,
            classifier_weights=tensors["classifier.weight"],
            classifier_bias=tensors["classifier.bias"],
            labels=settings["labels"],
            blend_weight=settings["blend_weight"],
            # models saved before calibration blended the transformer's probabilities as they were
            transformer_temperature=settings.get("transformer_temperature", 1.0),
            mask=tuple(settings.get("mask", ())),
        )


def _check_hashing(settings: dict, model_dir: Path) -> None:
    """A model hashed another way would score garbage: refuse it by name."""
    expected = {
        name: {"analyzer": analyzer, "ngram_range": list(ngrams)}
        for name, (analyzer, ngrams) in ANALYZERS.items()
    }
    saved = {
        name: {**group, "ngram_range": list(group["ngram_range"])}
        for name, group in settings["groups"].items()
    }
    if settings.get("hash_bits") != HASH_BITS or any(
        expected.get(name) != group for name, group in saved.items()
    ):
        raise ValueError(
            f"{model_dir / SETTINGS_FILE}: hashed with {settings.get('hash_bits')} bits and groups {saved}; "
            f"this version hashes with {HASH_BITS} bits and {expected}"
        )


def _vocabulary_groups(vocabularies: dict[str, dict[str, int]], tensors: dict) -> dict[str, NgramFeatures]:
    """The feature groups of a model saved before hashing, from its plain-text vocabularies."""
    groups = {}
    for name, vocabulary in vocabularies.items():
        analyzer, ngram_range = ANALYZERS[name]
        groups[name] = TfidfVectorizer(
            analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True, vocabulary=vocabulary
        )
        groups[name].idf_ = tensors[f"idf.{name}"]
    return groups


def _feature_count(group: NgramFeatures) -> int:
    return len(group.columns) if isinstance(group, HashedNgrams) else len(group.vocabulary_)


def blend_probabilities(
    transformer_probabilities: torch.Tensor,
    lexical_probabilities: torch.Tensor,
    weight: float,
    transformer_temperature: float = 1.0,
) -> torch.Tensor:
    """`weight` of the lexical probabilities plus the rest of the transformer's, its logits divided
    by `transformer_temperature` first."""
    transformer = soften(transformer_probabilities, transformer_temperature)
    return (1 - weight) * transformer + weight * lexical_probabilities


def features(vectorizers: dict[str, NgramFeatures], texts: list[str]) -> csr_matrix:
    """The sparse TF-IDF features of `texts`, feature groups side by side."""
    return hstack([vectorizer.transform(texts) for vectorizer in vectorizers.values()]).tocsr()


def fit_lexical_model(
    texts: list[str],
    label_ids: list[int],
    labels: list[str],
    blend_weight: float,
    mask: tuple[MaskKind, ...] = (),
) -> LexicalModel:
    """Fit the feature groups and the regression on labelled texts, masked as `mask` says (every
    label must occur, and some n-gram must be in `MIN_DOCUMENT_FREQUENCY` texts)."""
    missing = sorted(set(range(len(labels))) - set(label_ids))
    if missing:
        raise MissingLabelsError(
            f"no training texts labelled {', '.join(labels[index] for index in missing)}"
        )
    masked = [mask_text(text, mask) for text in texts] if mask else texts
    fitted = {name: fit_hashed_ngrams(name, masked) for name in ANALYZERS}
    if not any(matrix.nnz for _, matrix in fitted.values()):
        raise MissingLabelsError(
            f"no word or character n-gram is in {MIN_DOCUMENT_FREQUENCY} or more of the {len(texts)} "
            "training texts"
        )
    regression = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=3000)
    # the groups side by side in ANALYZERS order, as `features` stacks them at scoring
    regression.fit(hstack([matrix for _, matrix in fitted.values()]).tocsr(), label_ids)
    return LexicalModel(
        vectorizers={name: group for name, (group, _) in fitted.items()},
        classifier_weights=regression.coef_.astype(np.float32),
        classifier_bias=regression.intercept_.astype(np.float32),
        labels=list(labels),
        blend_weight=blend_weight,
        mask=tuple(mask),
    )


@dataclass(frozen=True)
class LexicalFit:
    """A fitted lexical half (`model`), or why there is none (`skipped`), and how many texts it saw."""

    model: LexicalModel | None
    texts: int
    skipped: str | None = None


def fit_lexical_half(
    rows: pd.DataFrame, blend_weight: float, mask: tuple[MaskKind, ...] = ()
) -> LexicalFit | None:
    """The lexical half fitted on `rows` (masked as `mask` says), or why it could not learn; None when
    `blend_weight` asks for none."""
    if not blend_weight:
        return None
    label_ids = [LABEL_TO_ID[label] for label in rows["label"]]
    try:
        model = fit_lexical_model(rows["text"].tolist(), label_ids, list(LABELS), blend_weight, mask)
    except MissingLabelsError as error:  # the transformer alone is still a model; the gate judges it
        return LexicalFit(None, len(rows), str(error))
    return LexicalFit(model, len(rows))


def save_lexical_half(
    fit: LexicalFit | None, model_dir: Path, transformer_temperature: float = 1.0
) -> dict | None:
    """Save the lexical half of `fit` beside the transformer, blending with its logits divided by
    `transformer_temperature`; what was done, for ``training.json`` (None: not asked for)."""
    if fit is None:
        return None
    if fit.model is None:
        logger.warning("published without its lexical half: %s", fit.skipped)
        return {"skipped": fit.skipped}
    lexical = fit.model
    lexical.transformer_temperature = transformer_temperature
    lexical.save(model_dir)
    return {
        "blend_weight": lexical.blend_weight,
        "transformer_temperature": lexical.transformer_temperature,
        "texts": fit.texts,
        "hashed_features": lexical.feature_counts(),
        "masked": list(lexical.mask),
    }
