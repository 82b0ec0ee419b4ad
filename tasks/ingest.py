"""Ingest: find batch files in ``incoming/`` that the manifest has not seen, and load them.

The manifest (``state/manifest.json``) records, per object key, the ETag that was ingested, so an
object rewritten with new content is a new batch, and an unchanged one is never read twice. It is
written with a compare-and-swap, so two runs racing cannot both commit the same batch.

Batch files are CSV, JSON Lines or Parquet, each optionally gzip-compressed (``.csv.gz`` ...).
A file that cannot be read becomes a `LoadedBatch` with an ``error`` (quarantined whole); a JSON
Lines file with some broken lines keeps the good lines and marks the broken ones (``_parse_error``).

CSV is read strictly, with checks that depend on no process-global state (batches are parsed on a
thread pool): a record with more or fewer fields than the header, or a quote the parser would have
to guess at (``"a "b" c"``, a quoted field never closed), rejects the file, naming row and line.

Memory bound of decompression: a ``.gz`` object is decompressed in `DECOMPRESS_CHUNK` (256 KiB)
pieces and rejected as soon as its output would pass ``max_decompressed_bytes``, so decompressing
holds at most the limit (+ up to 1/8 growth slack of the output buffer) + about 1 MiB of buffers,
whatever the object expands to (tracemalloc peak for a 200 MiB bomb with a 4 MiB limit: 5.3 MiB).
A file that fits then needs the decoded text and the frame on top, as an uncompressed one would.
"""

import csv
import gzip
import io
import itertools
import json
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from retrainer.core.batches import PARSE_ERROR, ROW_NUMBER, LoadedBatch, column_names_for_messages
from retrainer.core.text import join_title
from retrainer.core.validation import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from retrainer.settings import IngestSettings
from retrainer.storage import InvalidKeyError, ObjectInfo, ObjectStore
from tasks.common import once_task, read_task

MANIFEST_NAME = "manifest.json"
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
DECOMPRESS_CHUNK = 2**18
CSV_BATCH_RECORDS = 256  # records read at a time: fewer than the GC's first threshold (700)
CSV_ARROW_FIELDS = 2**18  # fields held as Python strings before they move to Arrow
DEFAULT_MAX_DECOMPRESSED_BYTES = IngestSettings.model_fields["max_decompressed_bytes"].default
# Binary formats recognised by their first bytes, so a misnamed file is reported as what it is.
MAGIC_BYTES = {
    b"\x1f\x8b": "gzip-compressed data",
    b"PK\x03\x04": "a zip archive (an .xlsx workbook or a .zip)",
    b"PAR1": "Parquet data",
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF-": "a PDF document",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "an old Office document (.xls or .doc)",
}
_CONTAINERS = ("gzip-compressed data", "Parquet data", MAGIC_BYTES[b"PK\x03\x04"])  # may hold tickets
# Byte-order marks of the Unicode encodings that are not UTF-8 (UTF-32 first: it starts like UTF-16).
TEXT_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32 (little-endian)",
    b"\x00\x00\xfe\xff": "UTF-32 (big-endian)",
    b"\xff\xfe": "UTF-16 (little-endian)",
    b"\xfe\xff": "UTF-16 (big-endian)",
}
# Separators a spreadsheet may export with instead of commas (a semicolon where "," is the decimal mark).
OTHER_DELIMITERS = {";": "semicolons (;)", "\t": "tabs", "|": "vertical bars (|)"}
# The columns a batch file may have; header names match them ignoring case, spaces and hyphens.
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "title")

# csv's default field limit (128 KiB) would reject long texts as unparseable; the text length policy
# (validation) and max_decompressed_bytes bound them instead.
CSV_FIELD_LIMIT = 2**31 - 1


class BatchFormatError(ValueError):
    """A batch file that cannot be read at all; the message names the file and the reason."""


class ManifestEntry(BaseModel):
    """What one ingested object contributed."""

    etag: str
    rows: int
    accepted: int
    quarantined: int
    run_id: str
    ingested_at: datetime
    merged: int = 0  # rows whose text and label an earlier ticket already has (quarantined as .merged.csv)
    erased: int = 0  # records of erased tickets withheld, not in `rows`: neither curated nor quarantined
    # An erasure request that removed accepted rows later, or rewrote the object, says so here: the
    # curated data holds `accepted - erased_rows` rows carrying ``source_etag`` (`curated_etag`).
    erased_rows: int = 0
    source_etag: str | None = None  # the ETag its curated rows carry, when an erasure rewrote the object

    @property
    def curated_etag(self) -> str:
        """The ETag that this object's curated rows carry as ``source_etag``."""
        return self.source_etag or self.etag


class Manifest(BaseModel):
    """Every object ingested so far, and the curated dataset version they produced.

    Erasure requests commit it too (`tasks.erasure`): each one counts in `erasures`, so a run that read
    it before an erasure loses its compare-and-swap; `erasure_rewrites` keeps, per object, the ETag
    changes (before -> after) of ``incoming/`` rewrites that no entry has caught up with yet.
    """

    dataset_version: str | None = None
    objects: dict[str, ManifestEntry] = Field(default_factory=dict)
    erasures: int = 0
    last_erasure: str | None = None
    erasure_rewrites: dict[str, dict[str, str]] = Field(default_factory=dict)


def manifest_key(store: ObjectStore) -> str:
    """Where the manifest lives."""
    return store.settings.state_prefix + MANIFEST_NAME


def read_manifest(store: ObjectStore) -> tuple[Manifest, str | None]:
    """The manifest and its ETag (None when nothing was ever ingested)."""
    found = store.get_if_exists(manifest_key(store))
    if found is None:
        return Manifest(), None
    data, etag = found
    return Manifest.model_validate_json(data), etag


def discover_new_batches(store: ObjectStore, manifest: Manifest) -> list[ObjectInfo]:
    """Objects under ``incoming/`` whose key+ETag the manifest has not recorded, oldest key first."""
    candidates = store.list_objects(store.settings.incoming_prefix)
    return [
        info
        for info in candidates
        if not info.key.endswith("/") and _recorded_etag(manifest, shown_key(info.key)) != info.etag
    ]


def shown_key(key: str) -> str:
    """`key` as the manifest, lineage and messages name it: itself, or for a name that is not valid
    UTF-8 (a file name with stray bytes in the folder store), the name with those bytes as ``\\x..``."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        try:
            return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name byte decodes to
            return key.encode("utf-8", "backslashreplace").decode("utf-8")


def load_batch(store: ObjectStore, info: ObjectInfo, settings: IngestSettings) -> LoadedBatch:
    """Read one batch object and parse it; a file that cannot be parsed carries its error instead, and so
    does an object whose name cannot be read (it is quarantined and alerted alone, never retried: the
    other batches go on)."""
    key = shown_key(info.key)
    if key != info.key:
        return _unread(info, key, "the object's name is not valid UTF-8 (shown with \\x escapes); rename it")
    if info.size > settings.max_object_bytes:
        return _unread(
            info, key, f"object is {info.size} bytes, over the limit of {settings.max_object_bytes}"
        )
    try:
        raw, etag = store.get(info.key)
    except InvalidKeyError as error:  # a name this store cannot hold: asking again cannot help
        return _unread(info, key, f"{error}; rename the object")
    return parsed_batch(info.key, etag, raw, settings)


def _unread(info: ObjectInfo, key: str, reason: str) -> LoadedBatch:
    return LoadedBatch(key=key, etag=info.etag, raw=b"", frame=None, error=f"{key}: {reason}")


def parsed_batch(key: str, etag: str, raw: bytes, settings: IngestSettings) -> LoadedBatch:
    """The batch in the bytes of object `key`: its parsed rows, or the error that names why it cannot be
    read (no S3 involved: what `load_batch` does with the bytes it downloaded)."""
    try:
        frame = parse_batch(raw, key, settings.column_aliases, settings.max_decompressed_bytes)
    except BatchFormatError as error:
        return LoadedBatch(key=key, etag=etag, raw=raw, frame=None, error=str(error))
    return LoadedBatch(key=key, etag=etag, raw=raw, frame=frame, error=None)


def load_batches(store: ObjectStore, infos: list[ObjectInfo], settings: IngestSettings) -> list[LoadedBatch]:
    """Load many batch objects concurrently (downloads overlap; order is kept)."""
    if len(infos) <= 1:
        return [load_batch(store, info, settings) for info in infos]
    with ThreadPoolExecutor(max_workers=min(settings.max_concurrency, len(infos))) as pool:
        return list(pool.map(lambda info: load_batch(store, info, settings), infos))


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
    name = key.lower()
    if name.endswith(".gz"):
        raw, name = gunzip(raw, key, max_decompressed_bytes), name[: -len(".gz")]
    _refuse_misnamed_binary(raw, key)
    if name.endswith(CSV_SUFFIXES):
        frame = _read_csv(raw, key)
    elif name.endswith(JSONL_SUFFIXES):
        frame = _read_jsonl(raw, key)
    elif name.endswith(PARQUET_SUFFIXES):
        frame = _read_parquet(raw, key)
    else:
        raise BatchFormatError(
            f"{key}: unsupported file type (expected .csv, .jsonl or .parquet, optionally .gz)"
        )
    return _merge_title(_apply_column_aliases(frame, key, column_aliases or {}))


def record_batches(
    manifest: Manifest, entries: dict[str, ManifestEntry], dataset_version: str | None
) -> Manifest:
    """A new manifest with `entries` recorded and the dataset version advanced. An object ingested now
    was read after every erasure rewrite the manifest knows of (else this commit loses): those go."""
    rewrites = {key: pairs for key, pairs in manifest.erasure_rewrites.items() if key not in entries}
    return manifest.model_copy(
        update={
            "dataset_version": dataset_version or manifest.dataset_version,
            "objects": {**manifest.objects, **entries},
            "erasure_rewrites": rewrites,
        }
    )


def commit_manifest(store: ObjectStore, manifest: Manifest, expected_etag: str | None) -> str:
    """Write the manifest only if nobody changed it since we read it (raises PreconditionFailedError)."""
    body = manifest.model_dump_json(indent=2).encode()
    if expected_etag is None:
        return store.put(manifest_key(store), body, if_none_match=True, content_type="application/json")
    return store.put(manifest_key(store), body, if_match=expected_etag, content_type="application/json")


def manifest_entry(
    rows: int, accepted: int, etag: str, run_id: str, merged: int = 0, erased: int = 0
) -> ManifestEntry:
    """The manifest record of one batch ingested now (every row accepted, merged or quarantined; the
    `erased` records withheld before validation are not rows)."""
    return ManifestEntry(
        etag=etag,
        rows=rows,
        accepted=accepted,
        quarantined=rows - accepted - merged,
        run_id=run_id,
        ingested_at=datetime.now(UTC),
        merged=merged,
        erased=erased,
    )


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


def _refuse_misnamed_binary(raw: bytes, key: str) -> None:
    """A binary format under another format's name (gzip named .csv ...) is named for what it is."""
    kind = next((kind for magic, kind in MAGIC_BYTES.items() if raw.startswith(magic)), None)
    named = _format_suffix(key)
    if kind is None or named is None or (kind == "Parquet data" and named.startswith(PARQUET_SUFFIXES)):
        return  # an unsupported name is reported as such by parse_batch
    if kind == "gzip-compressed data":
        hint = "compressed twice" if named.endswith(".gz") else f"name it {named}.gz"
    elif kind == "Parquet data":
        hint = "name it .parquet"
    elif kind in _CONTAINERS:
        hint = f"export or unzip it as {named.removesuffix('.gz')}"
    else:
        hint = "not a batch of tickets: export them as .csv, .jsonl or .parquet"
    raise BatchFormatError(f"{key}: {kind} in a file named {named} ({hint})")


def _format_suffix(key: str) -> str | None:
    """The supported suffix `key` ends with (``.csv``, ``.csv.gz`` ...), None when unsupported."""
    name = key.lower()
    for suffix in (*CSV_SUFFIXES, *JSONL_SUFFIXES, *PARQUET_SUFFIXES):
        for named in (suffix + ".gz", suffix):
            if name.endswith(named):
                return named
    return None


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


def _read_csv(raw: bytes, key: str) -> pd.DataFrame:
    text = decode_text(raw, key)
    if not text.strip():
        raise BatchFormatError(f"{key}: empty file (no header, no rows)")
    if "\x00" in text:
        if _looks_like_utf16(raw):
            raise BatchFormatError(
                f"{key}: UTF-16 text without a byte-order mark, not UTF-8: save it as UTF-8"
            )
        line = text[: text.index("\x00")].count("\n") + 1
        raise BatchFormatError(f"{key}: NUL byte at line {line} (binary or corrupt file)")
    delimiter = _other_delimiter(text)
    if delimiter:
        raise BatchFormatError(
            f"{key}: the header is separated by {OTHER_DELIMITERS[delimiter]}, not commas: "
            "save the file as comma-separated CSV"
        )
    reader = csv_reader(text)
    try:
        header = _csv_header(reader, key)
        _refuse_duplicate_columns(header, key)
        chunks: list[list[pyarrow.Array]] = [[] for _ in header]
        fields: list[str] = []  # record after record, flattened
        # Few records (each a list, tracked by the cyclic GC) live at a time: kept alive by the
        # million, they made the GC rescan the whole heap again and again (2-3x slower).
        while batch := list(itertools.islice(reader, CSV_BATCH_RECORDS)):
            fields.extend(itertools.chain.from_iterable(_same_width(batch, len(header))))
            if len(fields) >= CSV_ARROW_FIELDS:
                _to_arrow(fields, chunks)
        _to_arrow(fields, chunks)
    except (csv.Error, _RaggedRecordError):
        raise BatchFormatError(f"{key}: cannot parse CSV: {_first_csv_problem(text)}") from None
    columns = [name or f"Unnamed: {index}" for index, name in enumerate(header)]  # as pandas names them
    arrays = [pyarrow.chunked_array(chunk, pyarrow.string()) for chunk in chunks]
    return _numbered(pyarrow.Table.from_arrays(arrays, names=columns).to_pandas())


def _to_arrow(fields: list[str], chunks: list[list[pyarrow.Array]]) -> None:
    """Move the flattened records in `fields` into one Arrow string array per column (the dtype
    pandas' read_csv(dtype=str) gives), keeping Python strings for a bounded number of records."""
    width = len(chunks)
    for index, chunk in enumerate(chunks):
        chunk.append(pyarrow.array(fields[index::width], pyarrow.string()))
    fields.clear()


def _looks_like_utf16(raw: bytes) -> bool:
    """ASCII text in UTF-16 without a byte-order mark: every other byte of its start is NUL."""
    sample = raw[:1024]
    return len(sample) >= 8 and max(sample[0::2].count(0), sample[1::2].count(0)) >= 0.9 * (len(sample) // 2)


def _other_delimiter(text: str) -> str | None:
    """The separator of a header line that has no comma (outside quotes) but semicolons, tabs or bars."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    unquoted = re.sub(r'"[^"]*"', "", header)
    if "," in unquoted:
        return None
    counts = {delimiter: unquoted.count(delimiter) for delimiter in OTHER_DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


class _RaggedRecordError(Exception):
    """A record with another number of fields than the header (located by `_first_csv_problem`)."""


def _csv_header(reader, key: str) -> list[str]:
    for record in reader:
        if not is_blank_record(record):
            return record
    raise BatchFormatError(f"{key}: empty file (no header, no rows)")


def _same_width(records: list[list[str]], width: int) -> list[list[str]]:
    """`records` less blank lines, each `width` fields long, else `_RaggedRecordError`."""
    if width == 1 or set(map(len, records)) != {width}:  # blank lines, or a ragged record
        records = [record for record in records if not is_blank_record(record)]
        if any(len(record) != width for record in records):
            raise _RaggedRecordError
    return records


def _first_csv_problem(text: str) -> str:
    """Re-read record by record (slow, only for a bad file) to name the first bad record and line."""
    reader = csv_reader(text)
    width, row, end_line = None, 0, 0
    try:
        for record in reader:
            start_line, end_line = end_line + 1, reader.line_num
            if is_blank_record(record):
                continue
            if width is None:
                width = len(record)
                continue
            row += 1
            if len(record) != width:
                return f"row {row} (line {start_line}) has {len(record)} fields, the header has {width}"
    except csv.Error as error:
        where = "the header" if width is None else f"row {row + 1}"
        line = next(itertools.islice(io.StringIO(text, newline=""), reader.line_num - 1, None), "")
        return f"{where} (line {end_line + 1}): {_csv_error_reason(error, line)}"
    return "unknown problem"  # unreachable: _read_csv found one


def csv_reader(text: str):
    """A `csv.reader` over `text` that allows fields as long as a batch may be."""
    # Process-wide, so set when parsing, never at import; every caller sets the same value (thread-safe).
    csv.field_size_limit(CSV_FIELD_LIMIT)
    # newline="": lines end at \n, \r or \r\n only, and line ends inside quoted fields are kept as is.
    return csv.reader(io.StringIO(text, newline=""), strict=True)


def _csv_error_reason(error: csv.Error, line: str) -> str:
    """What a strict `csv.reader` error means, told from the physical `line` where it stopped (the
    reason only: no field's value, which may be a ticket's text)."""
    message = str(error)
    if message == "unexpected end of data":
        return "a quoted field is not closed before the end of the file"
    if message.endswith("expected after '\"'"):
        # A field that is not quoted but holds quotes and commas (a formula, =HYPERLINK("a","b")) reads
        # as several fields, and one starts with a quote: the fix is quoting that field, not doubling.
        unquoted = next((f for f in line.split(",") if '"' in f and not f.lstrip().startswith('"')), None)
        if unquoted is not None:
            what = "a spreadsheet formula" if unquoted.lstrip()[0] in "=+-@" else "a field"
            return (
                f"{what} holding quotes and commas is not enclosed in quotes: enclose the field in quotes "
                'and double the quotes inside it ("")'
            )
        return 'a quote inside a quoted field is not doubled (""), or text follows the closing quote'
    return message


def is_blank_record(record: list[str]) -> bool:
    """An empty or whitespace-only line (pandas skips these too), not a record."""
    return not record or (len(record) == 1 and not record[0].strip())


def _read_jsonl(raw: bytes, key: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(decode_text(raw, key).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record = {PARSE_ERROR: f"invalid JSON ({error.msg} at column {error.colno})"}
        if not isinstance(record, dict):
            record = {PARSE_ERROR: f"a JSON {type(record).__name__}, not an object"}
        records.append({**record, ROW_NUMBER: number})
    if not records:
        raise BatchFormatError(f"{key}: empty file (no JSON lines)")
    if all(PARSE_ERROR in record for record in records):
        first = records[0]
        raise BatchFormatError(
            f"{key}: no line is a JSON object (row {first[ROW_NUMBER]}: {first[PARSE_ERROR]})"
        )
    return pd.DataFrame.from_records(records)


def _read_parquet(raw: bytes, key: str) -> pd.DataFrame:
    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pyarrow.ArrowException, OSError) as error:
        raise BatchFormatError(f"{key}: cannot read Parquet: {error}") from error
    _refuse_duplicate_columns(table.column_names, key)
    return _numbered(table.to_pandas().astype(object))


def _numbered(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the 1-based record number that error messages cite (in place: no copy)."""
    frame[ROW_NUMBER] = np.arange(1, len(frame) + 1)
    return frame


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


def _merge_title(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``title`` column becomes the first line of ``text`` (the model reads the title first)."""
    if "title" not in frame.columns:
        return frame
    bodies = frame["text"] if "text" in frame.columns else [None] * len(frame)
    frame["text"] = [
        join_title(title, body) or body for title, body in zip(frame["title"], bodies, strict=True)
    ]
    return frame.drop(columns=["title"])


def _refuse_duplicate_columns(columns: list[str], key: str) -> None:
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise BatchFormatError(
            f"{key}: duplicate column(s) {column_names_for_messages(repeated)} in the header"
        )


def _repeated(renames: dict[str, str]) -> set[str]:
    targets = list(renames.values())
    return {target for target in targets if targets.count(target) > 1}


def _recorded_etag(manifest: Manifest, key: str) -> str | None:
    entry = manifest.objects.get(key)
    return entry.etag if entry else None


# Prefect wrappers: retries only on reads, which are idempotent. The CAS write is never retried:
# a lost race must surface, not be papered over.
read_manifest_task = read_task(read_manifest, "read-manifest")
discover_new_batches_task = read_task(discover_new_batches, "discover-new-batches")
load_batches_task = read_task(load_batches, "load-batches")
commit_manifest_task = once_task(commit_manifest, "commit-manifest")
