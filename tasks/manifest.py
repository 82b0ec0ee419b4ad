"""The manifest (``state/manifest.json``): which ``incoming/`` objects were ingested, and the curated
dataset version they produced. Runs commit it after ingesting (`tasks.ingest` finds what it has not
seen), erasure requests commit it as their fence (`tasks.erasure`).

It records, per object key, the ETag that was ingested, so an object rewritten with new content is a new
batch, and an unchanged one is never read twice. It is written with a compare-and-swap, so two runs
racing cannot both commit the same batch.
"""

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from retrainer.storage import ObjectStore
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


# Prefect wrappers: the read is retried (idempotent); the CAS write is never retried: a lost race must
# surface, not be papered over.
read_manifest_task = read_task(read_manifest, "read-manifest")
commit_manifest_task = once_task(commit_manifest, "commit-manifest")
