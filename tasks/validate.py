"""Quarantine: store under ``quarantine/<run_id>/`` what validation rejected or merged, with reasons.

The rules themselves are pure and live in `retrainer.core.validation`; this module writes their
outcome to S3 and wraps both in Prefect tasks. Per batch: ``<file>.errors.json`` (the problems, naming
file and row), ``<file>.rejected.csv`` (the rejected rows as they were in the file, with ``reason``),
``<file>.merged.csv`` (rows merged into an earlier ticket with the same text and label, with
``duplicate_of``) and, for a batch rejected whole, the file itself byte for byte. Problems are logged
without their values: no ticket text reaches the logs.
"""

import hashlib
import io
import json
import re

import pandas as pd

from retrainer.core.batch_files.ticket_ids import TICKET_ID
from retrainer.core.row_rules import FORMULA_PATTERN
from retrainer.core.validation import (
    ERRORS_SUFFIX,
    MERGED_SUFFIX,
    REASON_KIND,
    REJECTED_SUFFIX,
    ValidatedBatch,
    validate_batches,
)
from retrainer.id_index import ANY_CONTENT, record_holdings
from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task, run_logger


def quarantine_batches(
    store: ObjectStore, run_id: str, batches: list[ValidatedBatch], raws: list[bytes]
) -> list[str]:
    """Quarantine what each batch rejected; returns the keys written."""
    return [
        key
        for batch, raw in zip(batches, raws, strict=True)
        for key in quarantine_batch(store, run_id, batch, raw)
    ]


def quarantine_batch(store: ObjectStore, run_id: str, batch: ValidatedBatch, raw: bytes) -> list[str]:
    """Store under ``quarantine/<run_id>/`` what was rejected (the problems, the rejected rows, a file
    rejected whole) and the rows merged into earlier tickets with the same text (``.merged.csv``)."""
    base = store.settings.quarantine_prefix + f"{run_id}/{quarantine_name(store, batch.key)}"
    _index_quarantine(store, base, batch)
    keys = []
    if batch.rejected_whole or not batch.rejected.empty:
        # source_key: the batch's own name, also where `quarantine_name` had to shorten it
        report = {"source_key": batch.key, "source_etag": batch.etag, "problems": batch.problems}
        keys.append(base + ERRORS_SUFFIX)
        store.put(keys[-1], json.dumps(report, indent=2).encode(), content_type="application/json")
    if batch.rejected_whole:
        keys.append(base)
        store.put(base, raw)  # byte for byte, so a fixed file can be compared with the original
    if not batch.rejected.empty:
        keys.append(base + REJECTED_SUFFIX)
        store.put(keys[-1], _safe_csv(batch.rejected.drop(columns=[REASON_KIND])), content_type="text/csv")
    if not batch.merged.empty:
        keys.append(base + MERGED_SUFFIX)
        store.put(keys[-1], _safe_csv(batch.merged), content_type="text/csv")
    logger = run_logger()
    for problem in batch.loggable_problems[:20]:  # the full list, with values, is in the errors.json
        logger.warning("quarantined: %s", problem)
    if not batch.merged.empty:
        logger.info(
            "%s: %d row(s) merged into earlier tickets with the same text and label",
            batch.key,
            len(batch.merged),
        )
    return keys


def _index_quarantine(store: ObjectStore, base: str, batch: ValidatedBatch) -> None:
    """Describe the quarantine files of `batch` in the id index before writing them (`retrainer.id_index`):
    each holds at most the ids of the batch's records (its problems may name any of them). A batch
    rejected whole is not described: its bytes did not parse, so an erasure searches them."""
    if batch.rejected_whole or (batch.rejected.empty and batch.merged.empty):
        return
    ids = [*_ids(batch.accepted), *_ids(batch.rejected), *_ids(batch.merged)]
    record_holdings(store, {(base + suffix, ANY_CONTENT): ids for suffix in _QUARANTINE_SUFFIXES})


def _ids(rows: pd.DataFrame) -> list:
    return rows[TICKET_ID].tolist() if TICKET_ID in rows.columns else []


def _safe_csv(rows: pd.DataFrame) -> bytes:
    """CSV whose cells a spreadsheet will not execute (formula-looking cells get a leading quote)."""
    safe = rows.astype(str).apply(
        lambda column: column.where(~column.str.match(FORMULA_PATTERN), "'" + column)
    )
    buffer = io.StringIO()
    safe.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")


def quarantine_name(store: ObjectStore, key: str) -> str:
    """The name under ``quarantine/<run_id>/`` of batch `key`'s quarantine files: its name below
    ``incoming/`` where every store can hold that with the suffixes added; else a short name made of a
    digest of the key and the tail of its last part (the errors file keeps the key as ``source_key``).

    Bounded so that a name the producer could store never makes the quarantine write fail: S3 allows
    1,024 bytes per key, SeaweedFS and file systems 255 per path part; the folder store refuses parts
    with its own suffixes (``.~object``), and a raw copy must not end like a quarantine file.
    """
    prefix = store.settings.incoming_prefix
    name = key[len(prefix) :] if key.startswith(prefix) else key
    if _storable(name):
        return name
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1])[-_SHORT_TAIL:]
    return f"{digest}-{tail}"


_MAX_PART_BYTES = 200  # + the longest suffix (.rejected.csv) stays under 255
_MAX_NAME_BYTES = 800  # + quarantine/<run id>/ and a suffix stays under 1,024
_SHORT_TAIL = 60  # characters of the last part kept in a shortened name (its extension, mostly)
_QUARANTINE_SUFFIXES = (ERRORS_SUFFIX, REJECTED_SUFFIX, MERGED_SUFFIX)
# Control characters, U+FFFD (a byte that was not UTF-8), lone surrogates, backslash, and ".~", with which
# the folder store's own file suffixes begin.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\\ufffd\ud800-\udfff]|\.~")


def _storable(name: str) -> bool:
    parts = name.split("/")
    return (
        len(name.encode("utf-8", "surrogatepass")) <= _MAX_NAME_BYTES
        and not name.endswith(_QUARANTINE_SUFFIXES)
        and not _UNSAFE.search(name)
        and all(
            part not in ("", ".", "..") and len(part.encode("utf-8", "surrogatepass")) <= _MAX_PART_BYTES
            for part in parts
        )
    )


validate_batches_task = once_task(validate_batches, "validate-batches")
# Quarantine writes put the same bytes to run-scoped keys: idempotent, so retried like a read.
quarantine_batches_task = read_task(quarantine_batches, "quarantine-batches")
