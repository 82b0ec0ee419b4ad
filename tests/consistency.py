"""What must hold in a bucket after any fault or interleaving: the invariants the fault-injection and
interleaving suites check, also after erasures (`assert_consistent`)."""

import io

import pandas as pd

from retrainer.core.batch_files import BatchFormatError
from retrainer.core.batch_files.formats import ids_in_bytes, ids_in_unreadable, parse_batch
from retrainer.core.validation import normalise_ticket_ids
from retrainer.records import PRODUCTION_CHANGES
from retrainer.settings import IngestSettings
from retrainer.storage import ObjectStore
from tasks.dataset import dataset_versions, read_curated, version_parts
from tasks.erasure import ERRORS_SUFFIX, erased_ticket_ids
from tasks.manifest import read_manifest
from tasks.registry import (
    METRICS_FILE,
    WEIGHTS_FILE,
    read_history,
    read_production_pointer,
    version_prefix,
)

INGEST = IngestSettings()


def assert_curated_matches_manifest(store: ObjectStore) -> set[str]:
    """Every curated row comes from exactly one manifest entry, counted there once (less the rows an
    erasure removed since, under the ETag the rows carry); the ticket ids."""
    manifest, _ = read_manifest(store)
    curated = read_curated(store, manifest.dataset_version)
    if curated is None:
        assert all(entry.accepted == entry.erased_rows for entry in manifest.objects.values())
        return set()
    assert curated["ticket_id"].is_unique, "a ticket was curated twice"
    rows_per_source = curated.groupby(["source_key", "source_etag"]).size()
    for key, entry in manifest.objects.items():
        rows = rows_per_source.get((key, entry.curated_etag), 0)
        assert rows == entry.accepted - entry.erased_rows, f"{key}: {rows} curated rows, entry {entry}"
    assert sum(entry.accepted - entry.erased_rows for entry in manifest.objects.values()) == len(curated)
    return set(curated["ticket_id"])


def assert_pointer_matches_history(store: ObjectStore) -> None:
    """Production changes form one chain (no two runs replaced the same version), the pointer is its
    end, and it names a complete version."""
    pointer, _ = read_production_pointer(store)
    previous = None
    for record in read_history(store):
        if record.action in PRODUCTION_CHANGES:
            assert record.previous_version == previous, f"fork in the history at {record.run_id}"
            previous = record.production_version
    assert (pointer.version if pointer else None) == previous
    if pointer is not None:
        for name in (METRICS_FILE, WEIGHTS_FILE):
            assert store.get_if_exists(version_prefix(store, pointer.version) + name), name


def assert_listed_parts_present(store: ObjectStore) -> None:
    """Every part that a dataset version in the bucket lists is there."""
    for version in dataset_versions(store):
        if not store.list_objects(f"{store.settings.datasets_prefix}{version}/"):
            continue  # a deleted version's folder, still listed by SeaweedFS
        for part in version_parts(store, version):
            assert store.get_if_exists(part.key) is not None, f"{version} lists {part.key}, which is gone"


def assert_erased_nowhere(store: ObjectStore, erased: set[str]) -> None:
    """No `erased` ticket in a curated part (listed or not), nor as a ticket id in ``incoming/`` or the
    quarantine (a problem report naming it counts too)."""
    if not erased:
        return
    for info in store.list_objects(store.settings.datasets_prefix):
        if info.key.endswith(".parquet"):
            held = set(pd.read_parquet(io.BytesIO(store.get(info.key)[0]))["ticket_id"]) & erased
            assert not held, f"{info.key} holds erased ticket(s) {sorted(held)}"
    for prefix in (store.settings.incoming_prefix, store.settings.quarantine_prefix):
        for info in store.list_objects(prefix):
            held = _ids_held(info.key, store.get(info.key)[0], erased)
            assert not held, f"{info.key} holds erased ticket(s) {sorted(held)}"


def _ids_held(key: str, data: bytes, ids: set[str]) -> set[str]:
    if key.endswith(ERRORS_SUFFIX):
        return ids_in_bytes(data, key, ids, INGEST.max_decompressed_bytes) or set()
    try:
        frame = parse_batch(data, key, INGEST.column_aliases, INGEST.max_decompressed_bytes)
    except BatchFormatError:
        hits = ids_in_unreadable(data, key, ids, INGEST.column_aliases, INGEST.max_decompressed_bytes)
        return hits[0] if hits else set()
    if "ticket_id" not in frame.columns:
        return set()
    return set(normalise_ticket_ids(frame["ticket_id"]).dropna()) & ids


def assert_consistent(store: ObjectStore, erased: set[str] | None = None) -> set[str]:
    """Manifest, curated data, pointer and history agree; every listed part is there; no ticket erased
    on request (`erased`, default: every one the erasure log names) is left anywhere; the curated ids."""
    assert_pointer_matches_history(store)
    assert_listed_parts_present(store)
    assert_erased_nowhere(store, erased_ticket_ids(store) if erased is None else erased)
    return assert_curated_matches_manifest(store)
