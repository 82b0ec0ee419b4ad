"""Ingest: find batch files in ``incoming/`` that the manifest has not seen, and load them.

The manifest (``state/manifest.json``) records, per object key, the ETag that was ingested, so an
object rewritten with new content is a new batch, and an unchanged one is never read twice. It is
written with a compare-and-swap, so two runs racing cannot both commit the same batch.
"""

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from pydantic import BaseModel, Field

from retrainer.storage import ObjectInfo, ObjectStore
from tasks.common import once_task, read_task

MANIFEST_NAME = "manifest.json"


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


def load_batch(store: ObjectStore, info: ObjectInfo) -> LoadedBatch:
    """Read one batch object and parse it; a file that cannot be parsed carries its error instead."""
    raw, etag = store.get(info.key)
    try:
        frame = parse_batch(raw, info.key)
    except ValueError as error:
        return LoadedBatch(key=info.key, etag=etag, raw=raw, frame=None, error=str(error))
    return LoadedBatch(key=info.key, etag=etag, raw=raw, frame=frame, error=None)


def parse_batch(raw: bytes, key: str) -> pd.DataFrame:
    """Parse a CSV batch (UTF-8) into string columns; raise ValueError naming the file on failure."""
    if not key.lower().endswith(".csv"):
        raise ValueError(f"{key}: unsupported file type (expected .csv)")
    try:
        text = raw.decode("utf-8-sig")
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except UnicodeDecodeError as error:
        raise ValueError(f"{key}: not valid UTF-8 at byte {error.start}") from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"{key}: cannot parse CSV: {error}") from error


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


def _recorded_etag(manifest: Manifest, key: str) -> str | None:
    entry = manifest.objects.get(key)
    return entry.etag if entry else None


# Prefect wrappers: retries only on reads, which are idempotent. The CAS write is never retried:
# a lost race must surface, not be papered over.
read_manifest_task = read_task(read_manifest, "read-manifest")
discover_new_batches_task = read_task(discover_new_batches, "discover-new-batches")
load_batch_task = read_task(load_batch, "load-batch")
commit_manifest_task = once_task(commit_manifest, "commit-manifest")
