"""The batch file formats, one row each in `FORMATS`, and everything that goes through that table: parsing
a file for ingestion (`parse_batch`), rewriting one without some tickets for erasure (`without_tickets`),
searching one that could not be read (`ids_in_unreadable`), and the checks on a file's name and first
bytes. Adding a format is adding a row (and a module with its reader and rewriter).

Every format may be gzip-compressed (``.csv.gz`` ...). Memory bound of decompression: a ``.gz`` object
is decompressed in `DECOMPRESS_CHUNK` (256 KiB) pieces and rejected as soon as its output would pass
``max_decompressed_bytes``, so decompressing holds at most the limit (+ up to 1/8 growth slack of the
output buffer) + about 1 MiB of buffers, whatever the object expands to (tracemalloc peak for a 200 MiB
bomb with a 4 MiB limit: 5.3 MiB). A file that fits then needs the decoded text and the frame on top,
as an uncompressed one would.
"""

import gzip
import io
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from retrainer.core.batch_files import BYTE_ORDER_MARK, BatchFormatError, LoadedBatch
from retrainer.core.batch_files.csv_files import csv_without, ids_in_lenient_csv, read_csv
from retrainer.core.batch_files.json_lines import ids_in_json_lines, jsonl_without, read_jsonl
from retrainer.core.batch_files.parquet_files import parquet_without, read_parquet
from retrainer.core.batch_files.ticket_ids import ticket_id_names, ticket_id_pattern
from retrainer.core.text import join_title
from retrainer.core.validation import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from retrainer.settings import IngestSettings


@dataclass(frozen=True)
class BatchFormat:
    """One batch file format: how files in it are named, read, and rewritten without some tickets."""

    suffixes: tuple[str, ...]
    """The names' endings (matched ignoring case, before an optional ``.gz``); messages suggest the first."""
    read: Callable[[bytes, str], pd.DataFrame]
    """(bytes, key) -> a frame, one row per record with its number in ``_row``; `BatchFormatError` when
    the file cannot be read at all."""
    without_tickets: Callable[[bytes, str, set[str], set[str]], tuple[bytes, set[str]]]
    """(bytes, key, ids, the names of the ticket id columns) -> the file without the records of those
    ids, every other record kept as it was, and the ids it held; `BatchFormatError` when unreadable."""
    magic: tuple[bytes, str] | None = None
    """A binary format's first bytes and what they are called in messages (a file of this format under
    another format's name is refused as what it is)."""


FORMATS = (
    BatchFormat((".csv",), read_csv, csv_without),
    BatchFormat((".jsonl", ".ndjson"), read_jsonl, jsonl_without),
    BatchFormat((".parquet",), read_parquet, parquet_without, magic=(b"PAR1", "Parquet data")),
)
COMPRESSED = ".gz"  # gzip, after any format's suffix
_NAMED = [batch_format.suffixes[0] for batch_format in FORMATS]
SUPPORTED = f"{', '.join(_NAMED[:-1])} or {_NAMED[-1]}" if len(_NAMED) > 1 else _NAMED[0]
"""The formats as messages list them: ".csv, .jsonl or .parquet"."""

DECOMPRESS_CHUNK = 2**18
DEFAULT_MAX_DECOMPRESSED_BYTES = IngestSettings.model_fields["max_decompressed_bytes"].default
GZIP_DATA = "gzip-compressed data"
ZIP_DATA = "a zip archive (an .xlsx workbook or a .zip)"
# Binary formats recognised by their first bytes, so a misnamed file is reported as what it is.
MAGIC_BYTES = {
    b"\x1f\x8b": GZIP_DATA,
    b"PK\x03\x04": ZIP_DATA,
    **dict(f.magic for f in FORMATS if f.magic),
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF-": "a PDF document",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "an old Office document (.xls or .doc)",
}
_CONTAINERS = (GZIP_DATA, *(f.magic[1] for f in FORMATS if f.magic), ZIP_DATA)  # may hold tickets
# The columns a batch file may have; header names match them ignoring case, spaces and hyphens.
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "title")


def format_of(key: str) -> BatchFormat | None:
    """The format of the file named `key`, told by its suffix (ignoring case and a ``.gz`` after it);
    None when no format has that suffix."""
    name = key.lower().removesuffix(COMPRESSED)
    return next((batch_format for batch_format in FORMATS if name.endswith(batch_format.suffixes)), None)


def parse_batch(
    raw: bytes,
    key: str,
    column_aliases: dict[str, str] | None = None,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> pd.DataFrame:
    """Parse a batch file into a frame (one row per record, ``_row`` = its 1-based record number).

    Raises `BatchFormatError`, naming the file, when it cannot be read at all (including a ``.gz``
    that decompresses to more than `max_decompressed_bytes`, detected while decompressing).
    """
    if _compressed(key):
        raw = gunzip(raw, key, max_decompressed_bytes)
    _refuse_misnamed_binary(raw, key)
    batch_format = format_of(key)
    if batch_format is None:
        raise BatchFormatError(f"{key}: unsupported file type (expected {SUPPORTED}, optionally .gz)")
    frame = batch_format.read(raw, key)
    return _merge_title(_apply_column_aliases(frame, key, column_aliases or {}))


def parsed_batch(key: str, etag: str, raw: bytes, settings: IngestSettings) -> LoadedBatch:
    """The batch in the bytes of object `key`: its parsed rows, or the error that names why it cannot be
    read (no S3 involved: what `tasks.ingest.load_batch` does with the bytes it downloaded)."""
    try:
        frame = parse_batch(raw, key, settings.column_aliases, settings.max_decompressed_bytes)
    except BatchFormatError as error:
        return LoadedBatch(key=key, etag=etag, raw=raw, frame=None, error=str(error))
    return LoadedBatch(key=key, etag=etag, raw=raw, frame=frame, error=None)


def without_tickets(
    raw: bytes, key: str, ids: set[str], column_aliases: dict[str, str], max_decompressed_bytes: int
) -> tuple[bytes, set[str]]:
    """The batch file `raw` (named `key`) without the records of `ids`, in its format and compression,
    and the ids it held. Every other record keeps its bytes (CSV, JSON Lines) or its values (Parquet).

    Raises `BatchFormatError` when the file cannot be read (as ingestion would reject it).
    """
    compressed = _compressed(key)
    data = gunzip(raw, key, max_decompressed_bytes) if compressed else raw
    batch_format = format_of(key)
    if batch_format is None:
        raise BatchFormatError(f"{key}: unsupported file type")
    kept, found = batch_format.without_tickets(data, key, ids, ticket_id_names(column_aliases))
    if not found:
        return raw, found
    return (gzip.compress(kept) if compressed else kept), found


def ids_in_bytes(raw: bytes, key: str, ids: set[str], max_decompressed_bytes: int) -> set[str] | None:
    """Which of `ids` the bytes contain as a whole token anywhere, a ticket id or a mere mention
    (decompressed first when `key` ends in .gz); None when they cannot be searched (a .gz that does not
    decompress within the limit). Deciding what to delete takes `ids_in_unreadable`."""
    text = _searchable_text(raw, key, max_decompressed_bytes)
    if text is None:
        return None
    return {ticket_id for ticket_id in ids if ticket_id_pattern(ticket_id).search(text)}


def ids_in_unreadable(
    raw: bytes, key: str, ids: set[str], column_aliases: dict[str, str], max_decompressed_bytes: int
) -> tuple[set[str], set[str]] | None:
    """In a file ingestion could not read: which of `ids` stand where a ticket id stands (a ticket id
    field of a CSV record, read leniently, or of a JSON line that parses), and which are only mentioned
    elsewhere (a whole token in its text: "11 days ago"). None when it cannot be searched (a .gz that
    does not decompress within the limit). Only the first may delete the file; the second is for review.
    """
    text = _searchable_text(raw, key, max_decompressed_bytes)
    if text is None:
        return None
    text = text.removeprefix(BYTE_ORDER_MARK)
    names = {name.strip().lower() for name in ticket_id_names(column_aliases)}
    held = (ids_in_lenient_csv(text, ids, names) | ids_in_json_lines(text, ids, names)) & ids
    mentioned = {ticket_id for ticket_id in ids - held if ticket_id_pattern(ticket_id).search(text)}
    return held, mentioned


def gunzip(raw: bytes, key: str, limit: int) -> bytes:
    """Decompress chunk by chunk, stopping as soon as the output passes `limit` (a gzip bomb)."""
    output = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:  # reads concatenated members too
            while chunk := stream.read(DECOMPRESS_CHUNK):
                if output.tell() + len(chunk) > limit:
                    raise BatchFormatError(
                        f"{key}: decompresses to more than {limit} bytes, the limit "
                        "(max_decompressed_bytes); not read further"
                    )
                output.write(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise BatchFormatError(f"{key}: corrupt gzip data ({error})") from error
    return output.getvalue()  # shares BytesIO's buffer: no second copy of the data


def _compressed(key: str) -> bool:
    return key.lower().endswith(COMPRESSED)


def _searchable_text(raw: bytes, key: str, max_decompressed_bytes: int) -> str | None:
    """The bytes of object `key` as text whatever they hold (decompressed when it is a .gz), None when
    they do not decompress within the limit."""
    if _compressed(key):
        try:
            raw = gunzip(raw, key, max_decompressed_bytes)
        except BatchFormatError:
            return None
    return raw.decode("utf-8", errors="replace")


def _refuse_misnamed_binary(raw: bytes, key: str) -> None:
    """A binary format under another format's name (gzip named .csv ...) is named for what it is."""
    kind = next((kind for magic, kind in MAGIC_BYTES.items() if raw.startswith(magic)), None)
    named = _format_suffix(key)
    if kind is None or named is None or kind == _binary_kind(named):
        return  # an unsupported name is reported as such by parse_batch
    if kind == GZIP_DATA:
        hint = "compressed twice" if named.endswith(COMPRESSED) else f"name it {named}{COMPRESSED}"
    elif owner := next((f for f in FORMATS if f.magic and f.magic[1] == kind), None):
        hint = f"name it {owner.suffixes[0]}"
    elif kind in _CONTAINERS:
        hint = f"export or unzip it as {named.removesuffix(COMPRESSED)}"
    else:
        hint = f"not a batch of tickets: export them as {SUPPORTED}"
    raise BatchFormatError(f"{key}: {kind} in a file named {named} ({hint})")


def _binary_kind(named: str) -> str | None:
    """What the first bytes of a file named with suffix `named` are called when its format is binary."""
    batch_format = format_of(named)
    return batch_format.magic[1] if batch_format and batch_format.magic else None


def _format_suffix(key: str) -> str | None:
    """The supported suffix `key` ends with (``.csv``, ``.csv.gz`` ...), None when unsupported."""
    name = key.lower()
    for suffix in (suffix for batch_format in FORMATS for suffix in batch_format.suffixes):
        for named in (suffix + COMPRESSED, suffix):
            if name.endswith(named):
                return named
    return None


def _apply_column_aliases(frame: pd.DataFrame, key: str, aliases: dict[str, str]) -> pd.DataFrame:
    """Rename columns to the names validation reads: through `aliases`, and any header that matches a known
    column or an alias ignoring case, spaces and hyphens (``Ticket ID``, ``TEXT``); a column named twice
    that way is refused, as is one named directly and through an alias."""
    targets = {_column_key(name): name for name in KNOWN_COLUMNS}
    targets.update({_column_key(source): target for source, target in aliases.items()})
    named = {column: aliases.get(column) or targets.get(_column_key(column)) for column in frame.columns}
    renames = {column: name for column, name in named.items() if name not in (None, column)}
    if not renames:
        return frame
    clashes = sorted({target for target in renames.values() if target in frame.columns} | _repeated(renames))
    if clashes:
        raise BatchFormatError(
            f"{key}: column(s) {', '.join(clashes)} given twice (directly or through an alias)"
        )
    return frame.rename(columns=renames)


def _column_key(name) -> str:
    """A column name as header matching compares it: lower case, spaces and hyphens as underscores."""
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def _repeated(renames: dict[str, str]) -> set[str]:
    targets = list(renames.values())
    return {target for target in targets if targets.count(target) > 1}


def _merge_title(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``title`` column becomes the first line of ``text`` (the model reads the title first)."""
    if "title" not in frame.columns:
        return frame
    bodies = frame["text"] if "text" in frame.columns else [None] * len(frame)
    frame["text"] = [
        join_title(title, body) or body for title, body in zip(frame["title"], bodies, strict=True)
    ]
    return frame.drop(columns=["title"])
