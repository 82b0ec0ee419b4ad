"""Validation rules: split a loaded batch into rows fit to train on and rows to quarantine, with reasons.

Nothing is dropped silently: every input row ends up either accepted (with its lineage: source key,
ETag and row number) or rejected with a reason naming the file and the row. Three levels:

1. file: unreadable, or required columns missing -> the batch is rejected whole;
2. row: a pandera schema (types, text with a visible character, length bounds in visible
   characters, label in the label set after aliases, valid ``created_at``) plus checks against the
   batch and the curated data (duplicate ``ticket_id``, one text with conflicting labels);
3. batch: too many bad rows, too few rows (per batch or per class), label or text-length drift
   against the curated data -> the batch is rejected whole.

A row whose normalised text an earlier row of the batch or a curated ticket already has, with the same
label, is not a bad row: it is *merged* (kept out of the curated data, where the first occurrence stands
for it, and quarantined as ``<file>.merged.csv`` with ``duplicate_of``). Rejected and merged rows carry
the values they had in the file.

Pure (no S3, no Prefect): the schema each row must pass is in `retrainer.core.row_rules`, the checks
of rows against each other and the curated data in `retrainer.core.curated_profile`; `tasks.validate`
writes the outcome to the quarantine.
"""

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retrainer.core.batch_files import PARSE_ERROR, ROW_NUMBER, LoadedBatch, column_names_for_messages
from retrainer.core.curated_profile import CuratedProfile, RowKeys, merge_targets, relational_problems
from retrainer.core.labels import LABELS
from retrainer.core.row_rules import normalise_text, schema_problems
from retrainer.settings import ValidationPolicy

REQUIRED_COLUMNS = ("ticket_id", "text", "label")
OPTIONAL_COLUMNS = ("created_at",)
LINEAGE_COLUMNS = ("source_key", "source_etag", "source_row")
CURATED_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LINEAGE_COLUMNS)
REASON_KIND = "reason_kind"  # a rejected row's reason without the offending values: for reports and logs
ERRORS_SUFFIX, REJECTED_SUFFIX, MERGED_SUFFIX = ".errors.json", ".rejected.csv", ".merged.csv"
"""The quarantine files of a batch's outcome (`tasks.validate` writes them, `tasks.erasure` rewrites them):
its problems, its rejected rows, the rows merged into earlier tickets."""
_WHOLE_BATCH = "batch rejected: "


class ValidationFailedError(Exception):
    """Batches were rejected whole: the run ingests the good files, skips training and fails."""


@dataclass(frozen=True)
class ValidatedBatch:
    """The outcome of validating one batch file."""

    key: str
    etag: str
    rows: int
    accepted: pd.DataFrame
    rejected: pd.DataFrame  # the file's values, lineage, ``reason`` and `REASON_KIND`
    batch_errors: list[str] = field(default_factory=list)  # non-empty: the whole batch was rejected
    merged: pd.DataFrame = field(default_factory=pd.DataFrame)  # the file's values, lineage, duplicate_of
    erased: int = 0  # records of erased tickets withheld before validation: not in `rows`, nowhere stored

    @property
    def problems(self) -> list[str]:
        """Human-readable problems, each naming the file (and the row where there is one)."""
        return self._problem_lines("reason")

    @property
    def loggable_problems(self) -> list[str]:
        """The problems without the offending values (no ticket text): fit for logs."""
        return self._problem_lines(REASON_KIND)

    def _problem_lines(self, column: str) -> list[str]:
        batch = [f"{self.key}: batch rejected: {error}" for error in self.batch_errors]
        if self.rejected.empty:
            return batch
        rows = [
            f"{self.key}: row {row}: {reason}"
            for row, reason, kind in zip(
                self.rejected["source_row"], self.rejected[column], self.rejected[REASON_KIND], strict=True
            )
            if not str(kind).startswith(_WHOLE_BATCH)
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
) -> ValidatedBatch:
    """Check one loaded batch at file, row and batch level (see the module docstring)."""
    if batch.error:
        return _rejected_file(batch, batch.error.removeprefix(f"{batch.key}: "))
    missing = [name for name in REQUIRED_COLUMNS if name not in batch.frame.columns]
    if missing:
        columns = [name for name in batch.frame.columns if name != ROW_NUMBER]
        found = column_names_for_messages(columns)
        hint = _column_hint(missing, columns)
        return _rejected_file(
            batch, f"missing required column(s) {', '.join(missing)} (found: {found}){hint}"
        )
    rows = _prepare(batch, label_aliases)
    texts = normalise_text(rows["text"])
    keys = RowKeys.of(rows, texts)
    curated = profile.matches(keys)
    reasons, kinds = _row_reasons(rows, batch.frame.reset_index(drop=True), keys, curated, policy)
    duplicate_of = merge_targets(keys, curated["ticket_id"], reasons.isna().to_numpy())
    batch_errors = _batch_errors(rows, reasons, duplicate_of, policy, profile)
    if batch_errors:
        whole = _WHOLE_BATCH + "; ".join(batch_errors)
        reasons, kinds, duplicate_of = reasons.fillna(whole), kinds.fillna(whole), np.full(len(rows), None)
    bad = reasons.notna().to_numpy()
    merged = pd.notna(duplicate_of)
    good = ~bad & ~merged
    accepted = rows.loc[good, list(CURATED_COLUMNS)].astype(str).reset_index(drop=True)
    accepted["source_row"] = rows.loc[good, "source_row"].to_numpy()
    profile.add(accepted, keys.at(good))
    return ValidatedBatch(
        key=batch.key,
        etag=batch.etag,
        rows=len(rows),
        accepted=accepted,
        rejected=_as_in_file(
            batch, bad, reason=reasons[bad].to_numpy(), **{REASON_KIND: kinds[bad].to_numpy()}
        ),
        batch_errors=batch_errors,
        merged=_as_in_file(batch, merged, duplicate_of=duplicate_of[merged]),
        erased=batch.erased,
    )


def validate_batches(
    batches: list[LoadedBatch],
    policy: ValidationPolicy,
    label_aliases: dict[str, str],
    curated: pd.DataFrame | None,
) -> list[ValidatedBatch]:
    """Validate a run's batches in order, each against the curated data and the batches before it.

    No split is needed here: splits are assigned when accepted rows are merged into the curated data,
    and a text already curated is never added again (it is merged or rejected), so no eval text can
    reach training.
    """
    profile = CuratedProfile.of(curated)
    return [validate_batch(batch, policy, label_aliases, profile) for batch in batches]


def validation_failure(batches: list[ValidatedBatch]) -> str | None:
    """The message a run fails with when batches were rejected whole (None when none was)."""
    rejected = [batch for batch in batches if batch.rejected_whole]
    if not rejected:
        return None
    details = "; ".join(f"{batch.key}: {' / '.join(batch.batch_errors)}" for batch in rejected)
    return f"validation failed for {len(rejected)} of {len(batches)} batch(es), training skipped: {details}"


def _column_hint(missing: list[str], columns: list) -> str:
    """Where a found column's name is close to a missing one's (a typo; case, spaces and hyphens are
    already ignored by ingestion), the pair and where other names are mapped; else nothing. Only names
    that read like column names are shown, never a ticket's text (a headerless file has one there)."""
    shown = {
        str(name).lower(): str(name) for name in columns if column_names_for_messages([name]) == str(name)
    }
    candidates = [name for name in shown if name not in CURATED_COLUMNS]
    guesses = [
        f"{shown[match[0]]} looks like {name}"
        for name in missing
        if (match := difflib.get_close_matches(name, candidates, n=1, cutoff=0.6))
    ]
    if not guesses:
        return ""
    return (
        f"; {', '.join(guesses)}? Rename the column, or map it with the setting "
        "RETRAINER_INGEST__COLUMN_ALIASES (names already match ignoring case, spaces and hyphens)"
    )


def _rejected_file(batch: LoadedBatch, error: str) -> ValidatedBatch:
    frame = batch.frame if batch.frame is not None else pd.DataFrame()
    rejected = frame.assign(
        source_row=frame.get(ROW_NUMBER, pd.Series(dtype=int)),
        reason=_WHOLE_BATCH + error,
        **{REASON_KIND: _WHOLE_BATCH + error},  # file-level errors name columns and bytes, not ticket text
    )
    return ValidatedBatch(
        key=batch.key,
        etag=batch.etag,
        rows=len(frame),
        accepted=pd.DataFrame(columns=list(CURATED_COLUMNS)),
        rejected=rejected.drop(columns=[ROW_NUMBER], errors="ignore"),
        batch_errors=[error],
        erased=batch.erased,
    )


def _prepare(batch: LoadedBatch, label_aliases: dict[str, str]) -> pd.DataFrame:
    rows = batch.frame.reset_index(drop=True).copy()
    for column in (*OPTIONAL_COLUMNS, PARSE_ERROR):
        if column not in rows.columns:
            rows[column] = None if column == PARSE_ERROR else ""
    rows["ticket_id"] = normalise_ticket_ids(rows["ticket_id"])
    rows["label"] = canonical_labels(rows["label"], label_aliases)
    rows["source_key"] = batch.key
    rows["source_etag"] = batch.etag
    rows["source_row"] = rows[ROW_NUMBER].astype(int)
    return rows.drop(columns=[ROW_NUMBER])


def canonical_labels(labels: pd.Series, label_aliases: dict[str, str]) -> pd.Series:
    """A label column as validation reads it: stripped, lower-cased, then aliased (the schema then
    rejects what is not in the label set)."""
    labels = _strip_or_map(labels, _stripped)
    labels = labels.str.lower() if isinstance(labels.dtype, pd.StringDtype) else labels.map(_lower)
    return labels.replace(label_aliases) if label_aliases else labels


def canonical_label(label: str, label_aliases: dict[str, str]) -> str | None:
    """One label read as a batch's label column is (`canonical_labels`); None when it is not in the
    label set (validation rejects such a row)."""
    [canonical] = canonical_labels(pd.Series([label], dtype=object), label_aliases)
    return canonical if canonical in LABELS else None


def normalise_ticket_ids(column: pd.Series) -> pd.Series:
    """A ``ticket_id`` column as validation reads it: strings stripped, integers as text."""
    return _strip_or_map(column, as_identifier)


def _as_in_file(batch: LoadedBatch, mask: np.ndarray, **columns) -> pd.DataFrame:
    """The rows at `mask` with the values they have in the file, their lineage, and `columns`."""
    frame = batch.frame.reset_index(drop=True)[mask]
    return (
        frame.drop(columns=[ROW_NUMBER])
        .assign(
            source_key=batch.key, source_etag=batch.etag, source_row=frame[ROW_NUMBER].astype(int), **columns
        )
        .reset_index(drop=True)
    )


def _strip_or_map(series: pd.Series, function) -> pd.Series:
    """Strip a string column in one vectorised call; other columns go value by value."""
    return series.str.strip() if isinstance(series.dtype, pd.StringDtype) else series.map(function)


def _stripped(value):
    return value.strip() if isinstance(value, str) else value


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def as_identifier(value):
    """Ticket ids may arrive as JSON/Parquet integers; anything else keeps its type (and fails the schema)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def _row_reasons(
    rows: pd.DataFrame,
    in_file: pd.DataFrame,
    keys: RowKeys,
    curated: dict[str, np.ndarray],
    policy: ValidationPolicy,
) -> tuple[pd.Series, pd.Series]:
    """The problems of each row (None where there is none), schema problems first, and their kinds
    (the same without the offending values)."""
    parse_errors = pd.Series(rows[PARSE_ERROR].where(rows[PARSE_ERROR].notna(), None), dtype=object)
    schema_reasons, schema_kinds = schema_problems(rows.drop(columns=[PARSE_ERROR]), in_file, policy)
    reasons, kinds = parse_errors.fillna(schema_reasons), parse_errors.fillna(schema_kinds)
    clean = reasons.isna().to_numpy()
    source = rows["source_key"].iloc[0] if len(rows) else ""
    for mask, reason in relational_problems(keys, curated, clean, source):
        first = mask & reasons.isna().to_numpy()
        reasons[first], kinds[first] = reason, reason
    return reasons, kinds


def _batch_errors(
    rows: pd.DataFrame,
    reasons: pd.Series,
    duplicate_of: np.ndarray,
    policy: ValidationPolicy,
    profile: CuratedProfile,
) -> list[str]:
    """Whole-batch problems. Merged rows are valid rows (they count toward the row minimums, not as
    bad rows), but they add nothing to the curated data, so drift is judged on the rows that are added."""
    bad = reasons.notna().to_numpy()
    valid = rows.loc[~bad, ["label"]]
    good = rows.loc[~bad & pd.isna(duplicate_of), ["label", "text"]]
    errors = []
    bad_share = bad.sum() / len(rows) if len(rows) else 0.0
    if bad_share > policy.max_bad_row_share:
        errors.append(f"{bad_share:.0%} of rows are bad (limit {policy.max_bad_row_share:.0%})")
    if len(valid) < policy.min_rows_per_batch:
        errors.append(f"{len(valid)} good row(s), fewer than the minimum of {policy.min_rows_per_batch}")
    counts = valid["label"].value_counts()
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
