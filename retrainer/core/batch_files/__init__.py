"""Batch files, the files producers drop in ``incoming/``: how each format is read, and rewritten without
some tickets. Pure: no S3, no Prefect (`tasks.ingest` downloads them, `tasks.erasure` uploads rewrites).

By concern:
- here: a batch as ingestion hands it to validation (`LoadedBatch`), and what every format shares
  (`BatchFormatError`, text decoding, the record numbers that messages cite);
- `formats`: the format table (one row per format: its suffixes, how it is read, how it is rewritten
  without some tickets) that `parse_batch`, `without_tickets` and the suffix checks all go through, and
  the decompression limit of ``.gz`` files;
- `csv_files`, `json_lines`, `parquet_files`: each format's reader and rewriter;
- `ticket_ids`: ticket ids as files hold them, for erasure's searches.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

TICKET_ID = "ticket_id"

PARSE_ERROR = "_parse_error"
"""Column of a parsed frame: why a record could not be parsed (a broken JSON line); missing elsewhere."""
ROW_NUMBER = "_row"
"""Column of a parsed frame: each record's 1-based number in the file, which error messages cite."""
_COLUMN_NAME = re.compile(r"[^\W\d][\w.-]{0,39}|Unnamed: \d+")
"""A header field that reads like a column's name: one word of at most 40 characters (or how an empty
header field is named); anything else may be a ticket's text (a file without its header row)."""
BYTE_ORDER_MARK = "\ufeff"
# Byte-order marks of the Unicode encodings that are not UTF-8 (UTF-32 first: it starts like UTF-16).
TEXT_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32 (little-endian)",
    b"\x00\x00\xfe\xff": "UTF-32 (big-endian)",
    b"\xff\xfe": "UTF-16 (little-endian)",
    b"\xfe\xff": "UTF-16 (big-endian)",
}


class BatchFormatError(ValueError):
    """A batch file that cannot be read at all; the message names the file and the reason."""


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

    @property
    def ticket_ids(self) -> list | None:
        """The ticket id of each parsed record, as in the file; None when the batch was not parsed or has
        no ticket id column (an erasure then has to search its bytes: `retrainer.id_index`)."""
        if self.frame is None or TICKET_ID not in self.frame.columns:
            return None
        return self.frame[TICKET_ID].tolist()


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


def decode_text(raw: bytes, key: str) -> str:
    """`raw` as UTF-8 text; a `BatchFormatError` naming `key` and the byte offset when it is not."""
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated and dropped
    except UnicodeDecodeError as error:
        encoding = next((name for bom, name in TEXT_BOMS.items() if raw.startswith(bom)), None)
        if encoding:
            raise BatchFormatError(
                f"{key}: {encoding} text with a byte-order mark, not UTF-8: save it as UTF-8"
            ) from error
        raise BatchFormatError(f"{key}: not valid UTF-8 at byte {error.start}") from error


def encode_like(lines: list[str], original: bytes) -> bytes:
    """The text `lines` as UTF-8, with the byte-order mark `original` starts with (a rewrite of a text
    file keeps it: `decode_text` dropped it)."""
    bom = BYTE_ORDER_MARK if original.startswith(BYTE_ORDER_MARK.encode("utf-8")) else ""
    return (bom + "".join(lines)).encode("utf-8")


def numbered(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the 1-based record number that error messages cite (in place: no copy)."""
    frame[ROW_NUMBER] = np.arange(1, len(frame) + 1)
    return frame


def refuse_duplicate_columns(columns: list[str], key: str) -> None:
    """A `BatchFormatError` when a header names a column twice (which of them would be read?)."""
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise BatchFormatError(
            f"{key}: duplicate column(s) {column_names_for_messages(repeated)} in the header"
        )
