"""Validate: split a loaded batch into rows fit to train on and rows to quarantine, with reasons.

Nothing is dropped silently: every input row ends up either accepted (with its lineage: source key,
ETag and row number) or rejected with a reason that names the file and the row. A file that cannot
be used at all (unparseable, required columns missing) is rejected whole.
"""

import io
import json
from dataclasses import dataclass

import pandas as pd

from retrainer import LABELS
from retrainer.logs import run_logger
from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task
from tasks.ingest import LoadedBatch

REQUIRED_COLUMNS = ("ticket_id", "text", "label")
OPTIONAL_COLUMNS = ("created_at",)
LINEAGE_COLUMNS = ("source_key", "source_etag", "source_row")


@dataclass(frozen=True)
class ValidatedBatch:
    """The outcome of validating one batch file."""

    key: str
    etag: str
    rows: int
    accepted: pd.DataFrame
    rejected: pd.DataFrame
    file_error: str | None

    @property
    def problems(self) -> list[str]:
        """Human-readable problems, each naming the file (and the row where there is one)."""
        if self.file_error:
            return [self.file_error]
        return [f"{self.key}: row {row.source_row}: {row.reason}" for row in self.rejected.itertuples()]


def validate_batch(batch: LoadedBatch) -> ValidatedBatch:
    """Check one loaded batch: schema first, then every row."""
    file_error = batch.error or _schema_error(batch)
    if file_error:
        return ValidatedBatch(
            key=batch.key,
            etag=batch.etag,
            rows=_row_count(batch.frame),
            accepted=_empty_rows(),
            rejected=pd.DataFrame(columns=[*REQUIRED_COLUMNS, *LINEAGE_COLUMNS, "reason"]),
            file_error=file_error,
        )
    rows = _with_lineage(batch)
    reasons = rows.apply(_row_problem, axis=1) if len(rows) else pd.Series(dtype=str)
    rejected = rows[reasons.notna()].assign(reason=reasons[reasons.notna()])
    accepted = rows[reasons.isna()][list(_curated_columns())]
    return ValidatedBatch(
        key=batch.key,
        etag=batch.etag,
        rows=len(rows),
        accepted=accepted.reset_index(drop=True),
        rejected=rejected.reset_index(drop=True),
        file_error=None,
    )


def quarantine_batch(store: ObjectStore, run_id: str, batch: ValidatedBatch, raw: bytes) -> list[str]:
    """Store what was rejected under ``quarantine/<run_id>/``: the whole file, or the bad rows."""
    if not batch.file_error and batch.rejected.empty:
        return []
    base = store.settings.quarantine_prefix + f"{run_id}/{_relative_name(store, batch.key)}"
    report = {"source_key": batch.key, "source_etag": batch.etag, "problems": batch.problems}
    keys = [base + ".errors.json"]
    store.put(keys[0], json.dumps(report, indent=2).encode(), content_type="application/json")
    if batch.file_error:
        keys.append(base)
        store.put(base, raw)
    else:
        keys.append(base + ".rejected.csv")
        buffer = io.StringIO()
        batch.rejected.to_csv(buffer, index=False)
        store.put(keys[-1], buffer.getvalue().encode(), content_type="text/csv")
    logger = run_logger()
    for problem in batch.problems[:20]:  # the full list is in the quarantined errors.json
        logger.warning("quarantined: %s", problem)
    return keys


def _schema_error(batch: LoadedBatch) -> str | None:
    columns = list(batch.frame.columns)
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        return f"{batch.key}: missing required column(s) {', '.join(missing)} (found: {', '.join(columns)})"
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        return f"{batch.key}: duplicate column(s) {', '.join(duplicated)}"
    return None


def _with_lineage(batch: LoadedBatch) -> pd.DataFrame:
    rows = batch.frame.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in rows.columns:
            rows[column] = ""
    rows["ticket_id"] = rows["ticket_id"].str.strip()
    rows["label"] = rows["label"].str.strip()
    rows["source_key"] = batch.key
    rows["source_etag"] = batch.etag
    rows["source_row"] = range(1, len(rows) + 1)  # 1-based data row (the header is not counted)
    return rows


def _row_problem(row: pd.Series) -> str | None:
    if not row["ticket_id"]:
        return "empty ticket_id"
    if not str(row["text"]).strip():
        return "empty text"
    if row["label"] not in LABELS:
        return f"unknown label {row['label']!r} (expected one of {', '.join(LABELS)})"
    return None


def _curated_columns() -> tuple[str, ...]:
    return (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LINEAGE_COLUMNS)


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(columns=list(_curated_columns()))


def _row_count(frame: pd.DataFrame | None) -> int:
    return 0 if frame is None else len(frame)


def _relative_name(store: ObjectStore, key: str) -> str:
    prefix = store.settings.incoming_prefix
    return key[len(prefix) :] if key.startswith(prefix) else key


validate_batch_task = once_task(validate_batch, "validate-batch")
# Quarantine writes put the same bytes to run-scoped keys: idempotent, so retried like a read.
quarantine_batch_task = read_task(quarantine_batch, "quarantine-batch")
