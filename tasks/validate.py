"""Validate: split a loaded batch into rows fit to train on and rows to quarantine, with reasons.

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
"""

import io
import json
from dataclasses import dataclass, field
from functools import cached_property

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
from tasks.ingest import PARSE_ERROR, ROW_NUMBER, LoadedBatch

REQUIRED_COLUMNS = ("ticket_id", "text", "label")
OPTIONAL_COLUMNS = ("created_at",)
LINEAGE_COLUMNS = ("source_key", "source_etag", "source_row")
CURATED_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LINEAGE_COLUMNS)
MAX_TICKET_ID_CHARS = 200
# A cell a spreadsheet would execute: "=cmd|...", "@SUM(...)", "+HYPERLINK(...)"; "+1 for this" is fine.
FORMULA_PATTERN = r"^\s*(?:[=@]|[+\-]\S*[(|!])"
# The same in RE2 syntax, for pyarrow (about 10x faster than pandas' per-row `re`): RE2's \s is ASCII only,
# so Python's Unicode whitespace is spelled out.
_PY_SPACE = r"\s\x{0B}\x{1C}-\x{1F}\x{85}\p{Z}"
FORMULA_PATTERN_RE2 = rf"^[{_PY_SPACE}]*(?:[=@]|[+\-][^{_PY_SPACE}]*[(|!])"
# Characters that show nothing (RE2 syntax, for pyarrow): control and format characters (zero-width
# space and joiners, BOM, soft hyphen...), Unicode spaces and separators, and blank fillers (combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, braille blank, variation selectors).
SPACE_CHARS = r"\p{Cc}\p{Z}"
BLANK_CHARS = (
    r"\p{Cf}\x{034F}\x{115F}\x{1160}\x{17B4}\x{17B5}\x{2800}\x{3164}\x{FFA0}\x{FE00}-\x{FE0F}"
    r"\x{E0100}-\x{E01EF}"
)
INVISIBLE_PATTERN = f"[{SPACE_CHARS}{BLANK_CHARS}]+"
VISIBLE_CHAR = f"[^{SPACE_CHARS}{BLANK_CHARS}]"
# Spaces that normalising changes: a run of two or more, or anything but a plain space.
_NOT_PLAIN_SPACES = r"\p{Cc}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
ODD_SPACES = f"[{SPACE_CHARS}]{{2}}|[{_NOT_PLAIN_SPACES}]"
MAX_REGEX_REPEAT = 1000  # RE2's limit for a counted repetition
REASON_KIND = "reason_kind"  # a rejected row's reason without the offending values: for reports and logs


class ValidationFailedError(Exception):
    """Batches were rejected whole: the run ingests the good files, skips training and fails."""


class _SortedChunk:
    """Strings (with columns of values) in the order of their Python hashes, for exact lookups."""

    def __init__(self, keys: np.ndarray, columns: dict[str, np.ndarray], hashes: np.ndarray) -> None:
        self.keys, self.columns, self.hashes = keys, columns, hashes
        self.order = np.argsort(hashes)
        self.sorted_hashes = hashes[self.order]

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """The position of the latest occurrence of each key (-1 where absent)."""
        # Searching in sorted order lets numpy narrow each search from the last one: far fewer cache
        # misses than a million searches at random places.
        ascending = np.argsort(hashes)
        left, right = np.empty(len(keys), dtype=np.intp), np.empty(len(keys), dtype=np.intp)
        left[ascending] = np.searchsorted(self.sorted_hashes, hashes[ascending], side="left")
        right[ascending] = np.searchsorted(self.sorted_hashes, hashes[ascending], side="right")
        found = np.full(len(keys), -1, dtype=np.intp)
        single = np.flatnonzero(right - left == 1)  # almost every hit: confirm it is the same string
        candidates = self.order[left[single]]
        same = self.keys[candidates] == keys[single]
        found[single[same]] = candidates[same]
        for row in np.flatnonzero(right - left > 1):  # a repeated key, or (rarely) two strings, one hash
            matches = [at for at in self.order[left[row] : right[row]] if self.keys[at] == keys[row]]
            found[row] = max(matches, default=-1)  # the latest of equal keys
        return found


class KeyedRows:
    """Exact string lookups in data that grows batch by batch, in time linear in each batch's rows.

    Keys are hashed with Python's own str hash (computed in C, cached on each string object) into int64s,
    sorted once per chunk and searched with numpy; every hash match is confirmed by comparing the
    strings, so a collision never matches a wrong row. A chunk absorbs the smaller chunks before it
    (like a binary counter), so many small batches leave a few chunks and each row is re-sorted O(log n)
    times. Dicts would do the same in Python at several times the cost for a million rows. Chunks are
    sorted when first searched: the last batch of a run never pays for it.
    """

    def __init__(self, *columns: str) -> None:
        self.column_names = columns
        self.chunks: list[_SortedChunk] = []
        self.unsorted: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

    def add(self, keys: np.ndarray, hashes: np.ndarray, **columns: np.ndarray) -> None:
        """Take `keys` (with their `string_hashes`) and values; a key added again maps to its latest ones."""
        self.unsorted.append((keys, hashes, columns))

    def get(self, keys: np.ndarray, hashes: np.ndarray) -> dict[str, np.ndarray]:
        """Each column's latest value for each of `keys` (with their `string_hashes`); None where absent."""
        for added, added_hashes, columns in self.unsorted:
            self._sort_in(added, added_hashes, columns)
        self.unsorted.clear()
        values = {name: np.full(len(keys), None, dtype=object) for name in self.column_names}
        missing = np.arange(len(keys))
        for chunk in reversed(self.chunks):  # newest first: the latest value wins
            found = chunk.find(keys[missing], hashes[missing])
            hit = found >= 0
            for name, column in values.items():
                column[missing[hit]] = chunk.columns[name][found[hit]]
            missing = missing[~hit]
        return values

    def _sort_in(self, keys: np.ndarray, hashes: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        while self.chunks and len(self.chunks[-1]) <= len(keys):
            older = self.chunks.pop()
            keys, hashes = np.concatenate([older.keys, keys]), np.concatenate([older.hashes, hashes])
            columns = {name: np.concatenate([older.columns[name], columns[name]]) for name in columns}
        self.chunks.append(_SortedChunk(keys, columns, hashes))


@dataclass(frozen=True)
class RowKeys:
    """What the checks against the batch and the curated data compare, one array entry per row."""

    ids: np.ndarray  # ticket_id as str
    id_hashes: np.ndarray
    labels: np.ndarray  # as str, after aliases
    texts: np.ndarray  # normalised
    text_hashes: np.ndarray

    @classmethod
    def of(cls, rows: pd.DataFrame, texts: np.ndarray | None = None) -> "RowKeys":
        """The keys of `rows` (`texts`: their normalised texts, where already known)."""
        ids = rows["ticket_id"].astype(str).to_numpy(dtype=object)
        texts = normalise_text(rows["text"]) if texts is None else texts
        labels = rows["label"].astype(str).to_numpy(dtype=object)
        return cls(
            ids=ids,
            id_hashes=string_hashes(ids),
            labels=labels,
            texts=texts,
            text_hashes=string_hashes(texts),
        )

    def at(self, mask: np.ndarray) -> "RowKeys":
        """The keys of the rows at `mask`."""
        return RowKeys(*(getattr(self, name)[mask] for name in self.__dataclass_fields__))

    @cached_property
    def id_codes(self) -> np.ndarray:
        """Equal ticket_ids get equal codes (see `_codes`)."""
        return _codes(self.ids, self.id_hashes)

    @cached_property
    def text_codes(self) -> np.ndarray:
        """Equal normalised texts get equal codes (see `_codes`)."""
        return _codes(self.texts, self.text_hashes)


@dataclass
class CuratedProfile:
    """What validation compares a batch with: the curated data plus batches accepted earlier this run."""

    tickets: KeyedRows = field(default_factory=lambda: KeyedRows("source_key"))  # ticket_id -> source
    texts: KeyedRows = field(default_factory=lambda: KeyedRows("label", "ticket_id"))  # normalised text
    label_counts: dict[str, int] = field(default_factory=dict)
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # by length

    @classmethod
    def of(cls, curated: pd.DataFrame | None) -> "CuratedProfile":
        """The profile of a curated dataset (empty before the first one)."""
        profile = cls()
        if curated is not None and len(curated):
            profile.add(curated)
        return profile

    def add(self, rows: pd.DataFrame, keys: RowKeys | None = None) -> None:
        """Take curated `rows` (with their keys, where already known) into account for later batches."""
        keys = RowKeys.of(rows) if keys is None else keys
        sources = rows["source_key"].to_numpy(dtype=object)
        self.tickets.add(keys.ids, keys.id_hashes, source_key=sources)
        self.texts.add(keys.texts, keys.text_hashes, label=keys.labels, ticket_id=keys.ids)
        for label, count in rows["label"].value_counts().items():
            self.label_counts[label] = self.label_counts.get(label, 0) + int(count)
        # A histogram, not the lengths themselves: the median of all batches so far stays cheap.
        counts = np.bincount(rows["text"].str.len().to_numpy(dtype=np.int64))
        size = max(len(counts), len(self.length_counts))
        self.length_counts = np.pad(self.length_counts, (0, size - len(self.length_counts))) + np.pad(
            counts, (0, size - len(counts))
        )

    def matches(self, keys: RowKeys) -> dict[str, np.ndarray]:
        """Per row: ``source_key`` of the curated ticket with its ticket_id; ``label`` and ``ticket_id`` of
        the curated ticket with its text (None where there is none)."""
        return {
            **self.texts.get(keys.texts, keys.text_hashes),
            "source_key": self.tickets.get(keys.ids, keys.id_hashes)["source_key"],
        }

    @property
    def rows(self) -> int:
        return sum(self.label_counts.values())

    def median_length(self) -> float:
        """The median text length (characters) of the curated rows, as `np.median` would give it."""
        cumulative = np.cumsum(self.length_counts)
        total = int(cumulative[-1]) if len(cumulative) else 0
        if not total:
            return 0.0
        lower, upper = np.searchsorted(cumulative, [(total - 1) // 2, total // 2], side="right")
        return (float(lower) + float(upper)) / 2


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
        found = ", ".join(str(name) for name in batch.frame.columns if name != ROW_NUMBER)
        return _rejected_file(batch, f"missing required column(s) {', '.join(missing)} (found: {found})")
    rows = _prepare(batch, label_aliases)
    texts = normalise_text(rows["text"])
    keys = RowKeys.of(rows, texts)
    curated = profile.matches(keys)
    reasons, kinds = _row_reasons(rows, batch.frame.reset_index(drop=True), keys, curated, policy)
    duplicate_of = _duplicate_of(keys, curated["ticket_id"], reasons.isna().to_numpy())
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


def normalise_text(texts: pd.Series) -> np.ndarray:
    """Texts compared for duplicates and conflicts (vectorised): lower-case, blank characters such as
    zero-width spaces removed, every run of whitespace, separators and control characters one space."""
    array = _arrow_strings(texts)
    array = _replaced_where_found(
        array, f"[{BLANK_CHARS}]|{ODD_SPACES}", [(f"[{BLANK_CHARS}]+", ""), (f"[{SPACE_CHARS}]+", " ")]
    )
    trimmed = pc.utf8_trim(pc.utf8_lower(array), characters=" ")
    return np.asarray(trimmed.to_numpy(zero_copy_only=False), dtype=object)


def has_visible_chars(texts: pd.Series, count: int = 1) -> np.ndarray:
    """Whether each text has at least `count` characters that show something (vectorised): whitespace,
    separators, control and format characters (zero-width space, BOM...) and blank fillers do not count."""
    array = _arrow_strings(texts)
    if count <= MAX_REGEX_REPEAT:  # a scan with a regex automaton: no string is rewritten
        found = pc.match_substring_regex(array, pattern=f"(?s)(?:{VISIBLE_CHAR}.*){{{count}}}")
    else:
        visible = pc.replace_substring_regex(array, pattern=INVISIBLE_PATTERN, replacement="")
        found = pc.greater_equal(pc.utf8_length(visible), count)
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _arrow_strings(texts: pd.Series):
    return pc.fill_null(pa_array(texts.astype(str)), "")


def _replaced_where_found(array, found: str, replacements: list[tuple[str, str]]):
    """The (pattern, replacement) pairs applied in turn to the strings where `found` matches: most texts
    need no rewriting, and finding is many times faster than replacing."""
    where = pc.fill_null(pc.match_substring_regex(array, pattern=found), False)
    if not pc.any(where).as_py():
        return array
    replaced = pc.filter(array, where)
    for pattern, replacement in replacements:
        replaced = pc.replace_substring_regex(replaced, pattern=pattern, replacement=replacement)
    return pc.replace_with_mask(array, where, replaced)


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
    base = store.settings.quarantine_prefix + f"{run_id}/{_relative_name(store, batch.key)}"
    keys = []
    if batch.rejected_whole or not batch.rejected.empty:
        report = {"source_key": batch.key, "source_etag": batch.etag, "problems": batch.problems}
        keys.append(base + ".errors.json")
        store.put(keys[-1], json.dumps(report, indent=2).encode(), content_type="application/json")
    if batch.rejected_whole:
        keys.append(base)
        store.put(base, raw)  # byte for byte, so a fixed file can be compared with the original
    if not batch.rejected.empty:
        keys.append(base + ".rejected.csv")
        store.put(keys[-1], _safe_csv(batch.rejected.drop(columns=[REASON_KIND])), content_type="text/csv")
    if not batch.merged.empty:
        keys.append(base + ".merged.csv")
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


_WHOLE_BATCH = "batch rejected: "


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
        Check(_on_text(has_visible_chars), error="empty"),
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
                        _on_text(lambda s: ~looks_like_formula(s)),
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
                        _on_text(lambda s: has_visible_chars(s, policy.min_text_chars)),
                        error=f"shorter than {policy.min_text_chars} characters",
                    ),
                    Check(
                        _on_text(lambda s: s.str.len() <= policy.max_text_chars),
                        error=f"longer than {policy.max_text_chars} characters",
                    ),
                    Check(
                        _on_text(lambda s: ~looks_like_formula(s)),
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
    in_file: pd.DataFrame,
    keys: RowKeys,
    curated: dict[str, np.ndarray],
    policy: ValidationPolicy,
) -> tuple[pd.Series, pd.Series]:
    """The problems of each row (None where there is none), schema problems first, and their kinds
    (the same without the offending values)."""
    parse_errors = pd.Series(rows[PARSE_ERROR].where(rows[PARSE_ERROR].notna(), None), dtype=object)
    schema_reasons, schema_kinds = _schema_reasons(rows.drop(columns=[PARSE_ERROR]), in_file, policy)
    reasons, kinds = parse_errors.fillna(schema_reasons), parse_errors.fillna(schema_kinds)
    clean = reasons.isna().to_numpy()
    source = rows["source_key"].iloc[0] if len(rows) else ""
    for mask, reason in _relational_problems(keys, curated, clean, source):
        first = mask & reasons.isna().to_numpy()
        reasons[first], kinds[first] = reason, reason
    return reasons, kinds


def _schema_reasons(
    rows: pd.DataFrame, in_file: pd.DataFrame, policy: ValidationPolicy
) -> tuple[pd.Series, pd.Series]:
    """Per row, the schema's messages with the offending values as they are in the file (not trimmed,
    lower-cased or alias-mapped), and the same without the values (None: no problem)."""
    try:
        _row_schema(policy).validate(rows, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.dropna(subset=["index"])
        index = cases["index"].astype(int).to_numpy()
        kinds = [
            f"{column}: {_check_name(check)}"
            for column, check in zip(cases["column"], cases["check"], strict=True)
        ]
        messages = [
            f"{kind} (got {_preview(value)})"
            for kind, value in zip(kinds, _values_in_file(cases, index, in_file), strict=True)
        ]
        return _joined_per_row(index, messages, len(rows)), _joined_per_row(index, kinds, len(rows))
    no_problems = pd.Series(np.full(len(rows), None, dtype=object), dtype=object)
    return no_problems, no_problems.copy()


def _joined_per_row(index: np.ndarray, lines: list[str], rows: int) -> pd.Series:
    """The `lines` of each row joined with "; " (None for rows without one). A plain loop over the
    failures: a pandas groupby-join calls Python per group anyway, with far more overhead."""
    joined: dict[int, str] = {}
    for row, line in zip(index.tolist(), lines, strict=True):
        joined[row] = f"{joined[row]}; {line}" if row in joined else line
    result = np.full(rows, None, dtype=object)
    result[list(joined)] = list(joined.values())
    return pd.Series(result, dtype=object)


def _values_in_file(cases: pd.DataFrame, index: np.ndarray, in_file: pd.DataFrame) -> np.ndarray:
    """The file's value behind each failure case (the checked value where the file has no such column)."""
    values = cases["failure_case"].to_numpy(dtype=object).copy()
    columns = cases["column"].to_numpy(dtype=object)
    for column in set(columns) & set(in_file.columns):
        at = columns == column
        values[at] = in_file[column].iloc[index[at]].to_numpy(dtype=object)
    return values


def _relational_problems(keys: RowKeys, curated: dict[str, np.ndarray], clean: np.ndarray, source: str):
    """(mask, reason) pairs for checks against the rest of the batch and the curated data.

    Hashing and sorting only: linear in the batch's rows, whatever the size of the curated data.
    """
    positions = np.flatnonzero(clean)
    text_codes = keys.text_codes[positions]
    labels = keys.labels[positions]
    label_codes = sum(code * (labels == label) for code, label in enumerate(LABELS))  # clean: in LABELS
    lowest, highest = np.full(len(clean), len(LABELS)), np.full(len(clean), -1)
    np.minimum.at(lowest, text_codes, label_codes)
    np.maximum.at(highest, text_codes, label_codes)
    return [
        (
            _at(positions, _first_with_code(keys.id_codes, positions) != positions, len(clean)),
            "duplicate ticket_id (an earlier row of this batch has it)",
        ),
        (
            clean & pd.notna(curated["source_key"]) & (curated["source_key"] != source),
            "ticket_id already curated from another file",
        ),
        (
            _at(positions, lowest[text_codes] != highest[text_codes], len(clean)),
            "the same text appears with different labels in this batch",
        ),
        (
            clean & pd.notna(curated["label"]) & (curated["label"] != keys.labels),
            "the same text is curated with a different label",
        ),
    ]


def _duplicate_of(keys: RowKeys, curated_ticket: np.ndarray, good: np.ndarray) -> np.ndarray:
    """For each good row whose text a curated ticket or an earlier good row of the batch already has (with
    the same label: another label made it a bad row), the ticket_id that stands for it; None elsewhere.

    A curated ticket stands for its text even where it comes later in the batch; a row that is that
    ticket itself (a rewritten object re-sending it) is no duplicate.
    """
    positions = np.flatnonzero(good)
    ids = keys.ids[positions]
    keeper = curated_ticket[positions]
    keeper = np.where(pd.notna(keeper), keeper, keys.ids[_first_with_code(keys.text_codes, positions)])
    duplicate_of = np.full(len(good), None, dtype=object)
    duplicate_of[positions] = np.where(keeper != ids, keeper, None)
    return duplicate_of


def _codes(values: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Equal strings get equal codes (0, 1, ... below len(values)). Factorises the strings'
    `string_hashes` (int64s: fast), then confirms that each value equals the first value with its code;
    a hash collision (never seen) falls back to factorising the strings themselves."""
    codes, _ = pd.factorize(hashes)
    everywhere = np.arange(len(values))
    if not (values[_first_with_code(codes, everywhere)] == values).all():
        codes, _ = pd.factorize(values)
    return codes


def _first_with_code(codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each of `positions` (ascending), the first of `positions` whose code is the same."""
    first = np.empty(len(codes), dtype=np.intp)
    first[codes[positions[::-1]]] = positions[::-1]  # the last write per code is its first position
    return first[codes[positions]]


def string_hashes(values: np.ndarray) -> np.ndarray:
    """Python's hash of each string, as int64s (the same string always hashes alike within a process)."""
    return np.fromiter(map(hash, values), dtype=np.int64, count=len(values))


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


def _is_text(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.StringDtype):  # CSV columns: strings or missing, no need to look
        return series.notna()
    return series.map(lambda value: isinstance(value, str))


def _on_text(predicate):
    """A vectorised check applied to the string values only (non-strings are the type check's job)."""

    def check(series: pd.Series) -> pd.Series:
        is_text = _is_text(series).to_numpy()
        if is_text.all():  # the usual case: no copy of the column
            return pd.Series(np.asarray(predicate(series.astype(str)), dtype=bool), index=series.index)
        result = pd.Series(True, index=series.index)
        result[is_text] = np.asarray(predicate(series[is_text].astype(str)), dtype=bool)
        return result

    return check


def looks_like_formula(texts: pd.Series) -> np.ndarray:
    """Whether each text is a cell a spreadsheet would execute (`FORMULA_PATTERN`, vectorised)."""
    found = pc.match_substring_regex(_arrow_strings(texts), pattern=FORMULA_PATTERN_RE2)
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _valid_timestamps(series: pd.Series) -> pd.Series:
    present = series.notna() & series.astype(str).str.strip().ne("")
    parsed = pd.to_datetime(series.where(present), errors="coerce", utc=True, format="ISO8601")
    return ~present | parsed.notna()


def _at(positions: np.ndarray, flags: np.ndarray, rows: int) -> np.ndarray:
    """Spread flags of the rows at `positions` back onto all rows."""
    mask = np.zeros(rows, dtype=bool)
    mask[positions] = flags
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
