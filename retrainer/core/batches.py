"""A batch file as ingestion hands it to validation: its parsed rows, or why it could not be read."""

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

PARSE_ERROR = "_parse_error"
"""Column of a parsed frame: why a record could not be parsed (a broken JSON line); missing elsewhere."""
ROW_NUMBER = "_row"
"""Column of a parsed frame: each record's 1-based number in the file, which error messages cite."""
_COLUMN_NAME = re.compile(r"[^\W\d][\w.-]{0,39}|Unnamed: \d+")
"""A header field that reads like a column's name: one word of at most 40 characters (or how an empty
header field is named); anything else may be a ticket's text (a file without its header row)."""


@dataclass(frozen=True)
class LoadedBatch:
    """A batch object read from S3: parsed rows, or the reason it could not be parsed."""

    key: str
    etag: str
    raw: bytes
    frame: pd.DataFrame | None
    error: str | None
    erased: int = 0
    """Records withheld from `frame` (and `raw`) because their ticket was erased: neither curated nor
    quarantined, only counted (see `tasks.erasure.withhold_erased`)."""


def column_names_for_messages(names: Iterable) -> str:
    """A file's column `names`, comma-separated, for error messages, which reach alerts, reports and the
    run's state: a name that reads like text, not like a column (a file without its header row has a
    ticket there), is counted, not shown. The file itself, byte for byte, is in the quarantine."""
    names = [str(name) for name in names]
    shown = [name for name in names if _COLUMN_NAME.fullmatch(name)]
    hidden = len(names) - len(shown)
    if hidden:
        fields = "1 field that reads" if hidden == 1 else f"{hidden} fields that read"
        shown.append(f"{fields} like text, not shown (is the header row missing?)")
    return ", ".join(shown)
