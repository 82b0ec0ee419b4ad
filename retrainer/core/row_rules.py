"""Row rules: what each row of a batch must be on its own, and the text normalisation that
duplicate and conflict checks compare.

A pandera schema checks types, text with a visible character, length bounds in visible characters,
no spreadsheet formulas, no NUL bytes, the label in the label set (after aliases) and a valid
``created_at``; each row's problems are reported with the offending values as they are in the file, and
again without them (for reports and logs). The text checks are vectorised with pyarrow (RE2).
"""

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.compute as pc
from pandera.pandas import Check, Column, DataFrameSchema
from pyarrow import ChunkedArray
from pyarrow import array as pa_array

from retrainer.core.labels import LABELS
from retrainer.settings import ValidationPolicy

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


def looks_like_formula(texts: pd.Series) -> np.ndarray:
    """Whether each text is a cell a spreadsheet would execute (`FORMULA_PATTERN`, vectorised)."""
    found = pc.match_substring_regex(_arrow_strings(texts), pattern=FORMULA_PATTERN_RE2)
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def schema_problems(
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


def _row_schema(policy: ValidationPolicy) -> DataFrameSchema:
    text_checks = [
        Check(_is_text, error="must be text"),
        Check(_on_text(has_visible_chars), error="empty"),
        Check(_on_text(lambda s: ~s.str.contains("\x00", regex=False)), error="contains a NUL byte"),
    ]
    no_formula = Check(_on_text(lambda s: ~looks_like_formula(s)), error="looks like a spreadsheet formula")
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
                    no_formula,
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
                    no_formula,
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


def _valid_timestamps(series: pd.Series) -> pd.Series:
    present = series.notna() & series.astype(str).str.strip().ne("")
    parsed = pd.to_datetime(series.where(present), errors="coerce", utc=True, format="ISO8601")
    return ~present | parsed.notna()


def _arrow_strings(texts: pd.Series):
    strings = pa_array(texts.astype(str))
    # Arrow-backed text (e.g. curated data read from several parts) arrives in chunks, which a mask
    # replacement refuses: one contiguous array.
    if isinstance(strings, ChunkedArray):
        strings = strings.combine_chunks()
    return pc.fill_null(strings, "")


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


def _check_name(check: str) -> str:
    return "null value" if check == "not_nullable" else check


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
