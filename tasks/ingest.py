"""Ingest: find batch files in ``incoming/`` that the manifest has not seen, and load them.

The manifest (``state/manifest.json``) records, per object key, the ETag that was ingested, so an
object rewritten with new content is a new batch, and an unchanged one is never read twice. It is
written with a compare-and-swap, so two runs racing cannot both commit the same batch.

Batch files are CSV, JSON Lines or Parquet, each optionally gzip-compressed (``.csv.gz`` ...).
A file that cannot be read becomes a `LoadedBatch` with an ``error`` (quarantined whole); a JSON
Lines file with some broken lines keeps the good lines and marks the broken ones (``_parse_error``).
"""

import csv
import gzip
import io
import json
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from retrainer.settings import IngestSettings
from retrainer.storage import ObjectInfo, ObjectStore
from retrainer.text import join_title
from tasks.common import once_task, read_task

MANIFEST_NAME = "manifest.json"
PARSE_ERROR = "_parse_error"
ROW_NUMBER = "_row"
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


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


class Manifest(BaseModel):
    """Every object ingested so far, and the curated dataset version they produced."""

    dataset_version: str | None = None
    objects: dict[str, ManifestEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class LoadedBatch:
    """A batch object read from S3: parsed rows, or the reason it could not be parsed."""

    key: str
    etag: str
    raw: bytes
    frame: pd.DataFrame | None
    error: str | None


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
        if not info.key.endswith("/") and _recorded_etag(manifest, info.key) != info.etag
    ]


def load_batch(store: ObjectStore, info: ObjectInfo, settings: IngestSettings) -> LoadedBatch:
    """Read one batch object and parse it; a file that cannot be parsed carries its error instead."""
    if info.size > settings.max_object_bytes:
        error = f"{info.key}: object is {info.size} bytes, over the limit of {settings.max_object_bytes}"
        return LoadedBatch(key=info.key, etag=info.etag, raw=b"", frame=None, error=error)
    raw, etag = store.get(info.key)
    try:
        frame = parse_batch(raw, info.key, settings.column_aliases)
    except BatchFormatError as error:
        return LoadedBatch(key=info.key, etag=etag, raw=raw, frame=None, error=str(error))
    return LoadedBatch(key=info.key, etag=etag, raw=raw, frame=frame, error=None)


def load_batches(store: ObjectStore, infos: list[ObjectInfo], settings: IngestSettings) -> list[LoadedBatch]:
    """Load many batch objects concurrently (downloads overlap; order is kept)."""
    if len(infos) <= 1:
        return [load_batch(store, info, settings) for info in infos]
    with ThreadPoolExecutor(max_workers=min(settings.max_concurrency, len(infos))) as pool:
        return list(pool.map(lambda info: load_batch(store, info, settings), infos))


def parse_batch(raw: bytes, key: str, column_aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """Parse a batch file into a frame (one row per record, ``_row`` = its 1-based record number).

    Raises `BatchFormatError`, naming the file, when it cannot be read at all.
    """
    name = key.lower()
    if name.endswith(".gz"):
        raw, name = _gunzip(raw, key), name[: -len(".gz")]
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
    """A new manifest with `entries` recorded and the dataset version advanced."""
    return Manifest(
        dataset_version=dataset_version or manifest.dataset_version,
        objects={**manifest.objects, **entries},
    )


def commit_manifest(store: ObjectStore, manifest: Manifest, expected_etag: str | None) -> str:
    """Write the manifest only if nobody changed it since we read it (raises PreconditionFailedError)."""
    body = manifest.model_dump_json(indent=2).encode()
    if expected_etag is None:
        return store.put(manifest_key(store), body, if_none_match=True, content_type="application/json")
    return store.put(manifest_key(store), body, if_match=expected_etag, content_type="application/json")


def manifest_entry(rows: int, accepted: int, etag: str, run_id: str) -> ManifestEntry:
    """The manifest record of one batch ingested now."""
    return ManifestEntry(
        etag=etag,
        rows=rows,
        accepted=accepted,
        quarantined=rows - accepted,
        run_id=run_id,
        ingested_at=datetime.now(UTC),
    )


def _gunzip(raw: bytes, key: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise BatchFormatError(f"{key}: corrupt gzip data ({error})") from error


def _decode(raw: bytes, key: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated and dropped
    except UnicodeDecodeError as error:
        raise BatchFormatError(f"{key}: not valid UTF-8 at byte {error.start}") from error


def _read_csv(raw: bytes, key: str) -> pd.DataFrame:
    text = _decode(raw, key)
    if not text.strip():
        raise BatchFormatError(f"{key}: empty file (no header, no rows)")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise BatchFormatError(f"{key}: NUL byte at line {line} (binary or corrupt file)")
    try:
        with warnings.catch_warnings():
            # A record with more fields than the header would silently lose data: make it an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), dtype=str, keep_default_na=False, on_bad_lines="error", index_col=False
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, ValueError) as error:
        raise BatchFormatError(f"{key}: cannot parse CSV: {error}") from error
    _refuse_duplicate_columns(next(csv.reader(io.StringIO(text))), key)  # pandas would rename repeats
    return _numbered(frame)


def _read_jsonl(raw: bytes, key: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(_decode(raw, key).splitlines(), start=1):
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
    renames = {column: aliases[column] for column in frame.columns if column in aliases}
    if not renames:
        return frame
    clashes = sorted({target for target in renames.values() if target in frame.columns} | _repeated(renames))
    if clashes:
        raise BatchFormatError(
            f"{key}: column(s) {', '.join(clashes)} given twice (directly or through an alias)"
        )
    return frame.rename(columns=renames)


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
        raise BatchFormatError(f"{key}: duplicate column(s) {', '.join(repeated)} in the header")


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
