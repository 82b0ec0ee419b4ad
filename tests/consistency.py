"""What must hold in a bucket after any fault: the invariants the fault-injection suite checks."""

from retrainer.records import PRODUCTION_CHANGES
from retrainer.storage import ObjectStore
from tasks.dataset import read_curated
from tasks.ingest import read_manifest
from tasks.registry import (
    METRICS_FILE,
    WEIGHTS_FILE,
    read_history,
    read_production_pointer,
    version_prefix,
)


def assert_curated_matches_manifest(store: ObjectStore) -> set[str]:
    """Every curated row comes from exactly one manifest entry, counted there once; the ticket ids."""
    manifest, _ = read_manifest(store)
    curated = read_curated(store, manifest.dataset_version)
    if curated is None:
        assert all(entry.accepted == 0 for entry in manifest.objects.values())
        return set()
    assert curated["ticket_id"].is_unique, "a ticket was curated twice"
    rows_per_source = curated.groupby(["source_key", "source_etag"]).size()
    for key, entry in manifest.objects.items():
        assert rows_per_source.get((key, entry.etag), 0) == entry.accepted, key
    assert sum(entry.accepted for entry in manifest.objects.values()) == len(curated)
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


def assert_consistent(store: ObjectStore) -> set[str]:
    """Manifest, curated data, pointer and history agree; the curated ticket ids."""
    assert_pointer_matches_history(store)
    return assert_curated_matches_manifest(store)
