"""Validate: split a loaded batch into rows fit to train on and rows to quarantine, with reasons.

Nothing is dropped silently: every input row ends up either accepted (with its lineage: source key,
ETag and row number) or rejected with a reason naming the file and the row. Three levels:

1. file: unreadable, or required columns missing -> the batch is rejected whole;
2. row: a pandera schema (types, non-empty text, length bounds, label in the label set after
   aliases, valid ``created_at``) plus checks against the batch and the curated data (duplicate
   ``ticket_id``, duplicate text, one text with conflicting labels, eval-set text leaking into
   training);
3. batch: too many bad rows, too few rows (per batch or per class), label or text-length drift
   against the curated data -> the batch is rejected whole.
"""

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.compute as pc
from pandera.pandas import Check, Column, DataFrameSchema
from pyarrow import array as pa_array

from retrainer import LABELS
from retrainer.logs import run_logger
from retrainer.settings import ValidationPolicy
from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task
from tasks.dataset import EVAL, assign_split
from tasks.ingest import PARSE_ERROR, ROW_NUMBER, LoadedBatch

REQUIRED_COLUMNS = ("ticket_id", "text", "label")
OPTIONAL_COLUMNS = ("created_at",)
LINEAGE_COLUMNS = ("source_key", "source_etag", "source_row")
CURATED_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LINEAGE_COLUMNS)
MAX_TICKET_ID_CHARS = 200
# A cell a spreadsheet would execute: "=cmd|...", "@SUM(...)", "+HYPERLINK(...)"; "+1 for this" is fine.
FORMULA_PATTERN = r"^\s*(?:[=@]|[+\-]\S*[(|!])"


class ValidationFailedError(Exception):
    """Batches were rejected whole: the run ingests the good files, skips training and fails."""


@dataclass
class CuratedProfile:
    """What validation compares a batch with: the curated data plus batches accepted earlier this run."""

    source_by_ticket: dict[str, str] = field(default_factory=dict)
    label_by_text: dict[str, str] = field(default_factory=dict)  # normalised text -> label
    source_by_text: dict[str, str] = field(default_factory=dict)
    eval_texts: set[str] = field(default_factory=set)
    label_counts: dict[str, int] = field(default_factory=dict)
    lengths: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def of(cls, curated: pd.DataFrame | None) -> "CuratedProfile":
        """The profile of a curated dataset (empty before the first one)."""
        profile = cls()
        if curated is not None and len(curated):
            profile.add(curated, curated["split"])
        return profile

    def add(self, rows: pd.DataFrame, splits: pd.Series, texts: np.ndarray | None = None) -> None:
        """Take `rows` (with their splits and normalised texts) into account for later batches."""
        texts = normalise_text(rows["text"]) if texts is None else texts
        ids, labels, sources = (
            rows[name].to_numpy(dtype=object) for name in ("ticket_id", "label", "source_key")
        )
        self.source_by_ticket.update(zip(ids, sources, strict=True))  # numpy arrays: fast to iterate
        self.label_by_text.update(zip(texts, labels, strict=True))
        self.source_by_text.update(zip(texts, sources, strict=True))
        self.eval_texts.update(texts[splits.to_numpy() == EVAL])
        for label, count in rows["label"].value_counts().items():
            self.label_counts[label] = self.label_counts.get(label, 0) + int(count)
        self.lengths.append(rows["text"].str.len().to_numpy())

    @property
    def rows(self) -> int:
        return sum(self.label_counts.values())

    def median_length(self) -> float:
        return float(np.median(np.concatenate(self.lengths))) if self.lengths else 0.0


@dataclass(frozen=True)
class ValidatedBatch:
    """The outcome of validating one batch file."""

    key: str
    etag: str
    rows: int
    accepted: pd.DataFrame
    rejected: pd.DataFrame
    batch_errors: list[str] = field(default_factory=list)  # non-empty: the whole batch was rejected

    @property
    def problems(self) -> list[str]:
        """Human-readable problems, each naming the file (and the row where there is one)."""
        batch = [f"{self.key}: batch rejected: {error}" for error in self.batch_errors]
        rows = [
            f"{self.key}: row {row.source_row}: {row.reason}"
            for row in self.rejected.itertuples()
            if not str(row.reason).startswith(_WHOLE_BATCH)
        ]
        return batch + rows

    @property
    def rejected_whole(self) -> bool:
        return bool(self.batch_errors)


def validate_batch(
    batch: LoadedBatch,
    policy: ValidationPolicy,
    label_aliases: dict[str, str],
    profile: CuratedProfile,
    eval_fraction: float,
    validation_fraction: float,
) -> ValidatedBatch:
    """Check one loaded batch at file, row and batch level (see the module docstring)."""
    if batch.error:
        return _rejected_file(batch, batch.error.removeprefix(f"{batch.key}: "))
    missing = [name for name in REQUIRED_COLUMNS if name not in batch.frame.columns]
    if missing:
        found = ", ".join(str(name) for name in batch.frame.columns if name != ROW_NUMBER)
        return _rejected_file(batch, f"missing required column(s) {', '.join(missing)} (found: {found})")
    rows = _prepare(batch, label_aliases)
    ids = [str(value) for value in rows["ticket_id"].to_numpy(dtype=object)]  # missing ids become "nan"
    splits = pd.Series([assign_split(ticket_id, eval_fraction, validation_fraction) for ticket_id in ids])
    texts = normalise_text(rows["text"])
    reasons = _row_reasons(rows, texts, policy, profile, splits)
    batch_errors = _batch_errors(rows, reasons, policy, profile)
    if batch_errors:
        reasons = reasons.fillna(_WHOLE_BATCH + "; ".join(batch_errors))
    good = reasons.isna().to_numpy()
    accepted = rows.loc[good, list(CURATED_COLUMNS)].astype(str).reset_index(drop=True)
    accepted["source_row"] = rows.loc[good, "source_row"].to_numpy()
    profile.add(accepted, splits[good].reset_index(drop=True), texts[good])
    return ValidatedBatch(
        key=batch.key,
        etag=batch.etag,
        rows=len(rows),
        accepted=accepted,
        rejected=rows.loc[~good].assign(reason=reasons[~good]).reset_index(drop=True),
        batch_errors=batch_errors,
    )


def validate_batches(
    batches: list[LoadedBatch],
    policy: ValidationPolicy,
    label_aliases: dict[str, str],
    curated: pd.DataFrame | None,
    eval_fraction: float,
    validation_fraction: float,
) -> list[ValidatedBatch]:
    """Validate a run's batches in order, each against the curated data and the batches before it."""
    profile = CuratedProfile.of(curated)
    return [
        validate_batch(batch, policy, label_aliases, profile, eval_fraction, validation_fraction)
        for batch in batches
    ]


def validation_failure(batches: list[ValidatedBatch]) -> str | None:
    """The message a run fails with when batches were rejected whole (None when none was)."""
    rejected = [batch for batch in batches if batch.rejected_whole]
    if not rejected:
        return None
    details = "; ".join(f"{batch.key}: {' / '.join(batch.batch_errors)}" for batch in rejected)
    return f"validation failed for {len(rejected)} of {len(batches)} batch(es), training skipped: {details}"


def normalise_text(texts: pd.Series) -> np.ndarray:
    """Texts compared for duplicates and conflicts: lower-case, whitespace collapsed (vectorised)."""
    array = pa_array(texts.astype(str))
    collapsed = pc.replace_substring_regex(pc.utf8_lower(array), pattern=r"\s+", replacement=" ")
    return np.asarray(pc.utf8_trim_whitespace(collapsed).to_numpy(zero_copy_only=False), dtype=object)


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
    """Store what was rejected under ``quarantine/<run_id>/``: the rejected rows (and the whole file)."""
    if batch.rejected.empty and not batch.rejected_whole:
        return []
    base = store.settings.quarantine_prefix + f"{run_id}/{_relative_name(store, batch.key)}"
    report = {"source_key": batch.key, "source_etag": batch.etag, "problems": batch.problems}
    keys = [base + ".errors.json"]
    store.put(keys[0], json.dumps(report, indent=2).encode(), content_type="application/json")
    if batch.rejected_whole:
        keys.append(base)
        store.put(base, raw)  # byte for byte, so a fixed file can be compared with the original
    if not batch.rejected.empty:
        keys.append(base + ".rejected.csv")
        store.put(keys[-1], _safe_csv(batch.rejected), content_type="text/csv")
    logger = run_logger()
    for problem in batch.problems[:20]:  # the full list is in the quarantined errors.json
        logger.warning("quarantined: %s", problem)
    return keys


_WHOLE_BATCH = "batch rejected: "


def _rejected_file(batch: LoadedBatch, error: str) -> ValidatedBatch:
    frame = batch.frame if batch.frame is not None else pd.DataFrame()
    rejected = frame.assign(
        source_row=frame.get(ROW_NUMBER, pd.Series(dtype=int)), reason=_WHOLE_BATCH + error
    )
    return ValidatedBatch(
        key=batch.key,
        etag=batch.etag,
        rows=len(frame),
        accepted=pd.DataFrame(columns=list(CURATED_COLUMNS)),
        rejected=rejected.drop(columns=[ROW_NUMBER], errors="ignore"),
        batch_errors=[error],
    )


def _prepare(batch: LoadedBatch, label_aliases: dict[str, str]) -> pd.DataFrame:
    rows = batch.frame.reset_index(drop=True).copy()
    for column in (*OPTIONAL_COLUMNS, PARSE_ERROR):
        if column not in rows.columns:
            rows[column] = None if column == PARSE_ERROR else ""
    rows["ticket_id"] = _strip_or_map(rows["ticket_id"], _as_identifier)
    labels = _strip_or_map(rows["label"], _stripped)
    labels = labels.str.lower() if isinstance(labels.dtype, pd.StringDtype) else labels.map(_lower)
    rows["label"] = labels.replace(label_aliases) if label_aliases else labels
    rows["source_key"] = batch.key
    rows["source_etag"] = batch.etag
    rows["source_row"] = rows[ROW_NUMBER].astype(int)
    return rows.drop(columns=[ROW_NUMBER])


def _strip_or_map(series: pd.Series, function) -> pd.Series:
    """Strip a string column in one vectorised call; other columns go value by value."""
    return series.str.strip() if isinstance(series.dtype, pd.StringDtype) else series.map(function)


def _stripped(value):
    return value.strip() if isinstance(value, str) else value


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def _as_identifier(value):
    """Ticket ids may arrive as JSON/Parquet integers; anything else keeps its type (and fails the schema)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def _row_schema(policy: ValidationPolicy) -> DataFrameSchema:
    text_checks = [
        Check(_is_text, error="must be text"),
        Check(_on_text(lambda s: s.str.strip().str.len() > 0), error="empty"),
        Check(_on_text(lambda s: ~s.str.contains("\x00", regex=False)), error="contains a NUL byte"),
    ]
    return DataFrameSchema(
        {
            "ticket_id": Column(
                None,
                [
                    *text_checks,
                    Check(
                        _on_text(lambda s: s.str.len() <= MAX_TICKET_ID_CHARS),
                        error="longer than 200 characters",
                    ),
                    Check(
                        _on_text(lambda s: ~s.str.match(FORMULA_PATTERN)),
                        error="looks like a spreadsheet formula",
                    ),
                ],
                nullable=False,
            ),
            "text": Column(
                None,
                [
                    *text_checks,
                    Check(
                        _on_text(lambda s: s.str.strip().str.len() >= policy.min_text_chars),
                        error=f"shorter than {policy.min_text_chars} characters",
                    ),
                    Check(
                        _on_text(lambda s: s.str.len() <= policy.max_text_chars),
                        error=f"longer than {policy.max_text_chars} characters",
                    ),
                    Check(
                        _on_text(lambda s: ~s.str.match(FORMULA_PATTERN)),
                        error="looks like a spreadsheet formula",
                    ),
                ],
                nullable=False,
            ),
            "label": Column(
                None,
                [Check(lambda s: s.isin(LABELS), error=f"not one of {', '.join(LABELS)}")],
                nullable=False,
            ),
            "created_at": Column(
                None, [Check(_valid_timestamps, error="not a valid timestamp")], nullable=True
            ),
        },
        strict=False,
    )


def _row_reasons(
    rows: pd.DataFrame,
    texts: np.ndarray,
    policy: ValidationPolicy,
    profile: CuratedProfile,
    splits: pd.Series,
) -> pd.Series:
    """The first problem of each row (None where there is none), schema problems first."""
    reasons = pd.Series(rows[PARSE_ERROR].where(rows[PARSE_ERROR].notna(), None), dtype=object)
    reasons = reasons.fillna(_schema_reasons(rows.drop(columns=[PARSE_ERROR]), policy))
    clean = reasons.isna().to_numpy()
    for mask, reason in _relational_problems(rows, texts, clean, profile, splits):
        reasons = reasons.mask(pd.Series(mask & reasons.isna().to_numpy()), reason)
    return reasons


def _schema_reasons(rows: pd.DataFrame, policy: ValidationPolicy) -> pd.Series:
    try:
        _row_schema(policy).validate(rows, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.dropna(subset=["index"])
        messages = [
            f"{column}: {_check_name(check)} (got {_preview(value)})"
            for column, check, value in zip(
                cases["column"], cases["check"], cases["failure_case"], strict=True
            )
        ]
        per_row = pd.Series(messages, index=cases["index"].astype(int).to_numpy())
        return per_row.groupby(level=0).agg("; ".join).reindex(rows.index)
    return pd.Series(None, index=rows.index, dtype=object)


def _relational_problems(
    rows, texts: np.ndarray, clean: np.ndarray, profile: CuratedProfile, splits: pd.Series
):
    """(mask, reason) pairs for checks against the rest of the batch and the curated data."""
    ids = rows["ticket_id"].astype(str)
    source = rows["source_key"].iloc[0] if len(rows) else ""
    curated_source = ids.map(profile.source_by_ticket).to_numpy()
    text_source = pd.Series(texts).map(profile.source_by_text).to_numpy()
    frame = pd.DataFrame(
        {"id": ids.to_numpy(), "text": texts, "label": rows["label"].astype(str).to_numpy()}
    )[clean]
    conflicting = frame.groupby("text")["label"].transform("nunique").gt(1)
    curated_label = pd.Series(texts).map(profile.label_by_text).to_numpy()
    return [
        (_at(clean, frame["id"].duplicated()), "duplicate ticket_id (an earlier row of this batch has it)"),
        (
            clean & pd.notna(curated_source) & (curated_source != source),
            "ticket_id already curated from another file",
        ),
        (
            clean & np.isin(texts, list(profile.eval_texts)) & (splits.to_numpy() != EVAL),
            "text is in the eval set: training on it would leak the evaluation",
        ),
        (_at(clean, conflicting), "the same text appears with different labels in this batch"),
        (
            clean & pd.notna(curated_label) & (curated_label != rows["label"].to_numpy()),
            "the same text is curated with a different label",
        ),
        (_at(clean, frame["text"].duplicated()), "duplicate text (an earlier row of this batch has it)"),
        (clean & pd.notna(text_source) & (text_source != source), "duplicate text of a curated ticket"),
    ]


def _batch_errors(
    rows: pd.DataFrame, reasons: pd.Series, policy: ValidationPolicy, profile: CuratedProfile
) -> list[str]:
    good = rows[reasons.isna().to_numpy()]
    errors = []
    bad_share = 1 - len(good) / len(rows) if len(rows) else 0.0
    if bad_share > policy.max_bad_row_share:
        errors.append(f"{bad_share:.0%} of rows are bad (limit {policy.max_bad_row_share:.0%})")
    if len(good) < policy.min_rows_per_batch:
        errors.append(f"{len(good)} good row(s), fewer than the minimum of {policy.min_rows_per_batch}")
    counts = good["label"].value_counts()
    thin = [
        f"{label}={int(counts.get(label, 0))}"
        for label in LABELS
        if counts.get(label, 0) < policy.min_rows_per_class
    ]
    if thin:
        errors.append(f"too few rows per class ({', '.join(thin)}; minimum {policy.min_rows_per_class})")
    return errors + _drift_errors(good, policy, profile)


def _drift_errors(good: pd.DataFrame, policy: ValidationPolicy, profile: CuratedProfile) -> list[str]:
    if len(good) < policy.drift_min_rows or profile.rows < policy.drift_min_rows:
        return []
    batch_shares = good["label"].value_counts(normalize=True)
    curated_total = profile.rows
    distance = 0.5 * sum(
        abs(float(batch_shares.get(label, 0.0)) - profile.label_counts.get(label, 0) / curated_total)
        for label in LABELS
    )
    errors = []
    if distance > policy.max_label_drift:
        errors.append(
            f"label drift: distribution differs from the curated data by {distance:.2f} "
            f"(total variation; limit {policy.max_label_drift:.2f})"
        )
    curated_median, batch_median = profile.median_length(), float(good["text"].str.len().median())
    change = abs(batch_median - curated_median) / curated_median if curated_median else 0.0
    if change > policy.max_length_drift:
        errors.append(
            f"text-length drift: median {batch_median:.0f} characters vs {curated_median:.0f} curated "
            f"({change:.0%} change; limit {policy.max_length_drift:.0%})"
        )
    return errors


def _is_text(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.StringDtype):  # CSV columns: strings or missing, no need to look
        return series.notna()
    return series.map(lambda value: isinstance(value, str))


def _on_text(predicate):
    """A vectorised check applied to the string values only (non-strings are the type check's job)."""

    def check(series: pd.Series) -> pd.Series:
        is_text = _is_text(series).to_numpy()
        result = pd.Series(True, index=series.index)
        result[is_text] = predicate(series[is_text].astype(str)).to_numpy(dtype=bool)
        return result

    return check


def _valid_timestamps(series: pd.Series) -> pd.Series:
    present = series.notna() & series.astype(str).str.strip().ne("")
    parsed = pd.to_datetime(series.where(present), errors="coerce", utc=True, format="ISO8601")
    return ~present | parsed.notna()


def _at(clean: np.ndarray, flags: pd.Series) -> np.ndarray:
    """Spread per-clean-row flags back onto all rows."""
    mask = np.zeros(len(clean), dtype=bool)
    mask[np.flatnonzero(clean)] = flags.to_numpy(dtype=bool)
    return mask


def _check_name(check: str) -> str:
    return "null value" if check == "not_nullable" else check


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _safe_csv(rows: pd.DataFrame) -> bytes:
    """CSV whose cells a spreadsheet will not execute (formula-looking cells get a leading quote)."""
    safe = rows.astype(str).apply(
        lambda column: column.where(~column.str.match(FORMULA_PATTERN), "'" + column)
    )
    buffer = io.StringIO()
    safe.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")


def _relative_name(store: ObjectStore, key: str) -> str:
    prefix = store.settings.incoming_prefix
    return key[len(prefix) :] if key.startswith(prefix) else key


validate_batches_task = once_task(validate_batches, "validate-batches")
# Quarantine writes put the same bytes to run-scoped keys: idempotent, so retried like a read.
quarantine_batches_task = read_task(quarantine_batches, "quarantine-batches")
