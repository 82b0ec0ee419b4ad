"""The registry: immutable versions, a compare-and-swap production pointer, a decision history."""

from datetime import UTC, datetime

import pytest

from retrainer.storage import PreconditionFailedError
from tasks.registry import (
    DecisionRecord,
    ProductionPointer,
    fetch_model,
    flip_production_pointer,
    last_decision,
    new_version_id,
    publish_model,
    read_production_pointer,
    record_decision,
)


def _pointer(version: str) -> ProductionPointer:
    return ProductionPointer(
        version=version, accuracy=0.9, dataset_version="ds-1", promoted_at=datetime.now(UTC), run_id="r"
    )


def test_first_flip_creates_the_pointer_and_a_second_first_flip_is_refused(store):
    assert read_production_pointer(store) == (None, None)
    etag = flip_production_pointer(store, _pointer("m-1"), expected_etag=None)

    with pytest.raises(PreconditionFailedError):
        flip_production_pointer(store, _pointer("m-other"), expected_etag=None)
    pointer, current = read_production_pointer(store)
    assert (pointer.version, current) == ("m-1", etag)


def test_a_pointer_write_with_a_stale_etag_is_refused(store):
    first = flip_production_pointer(store, _pointer("m-1"), None)
    flip_production_pointer(store, _pointer("m-2"), first)

    with pytest.raises(PreconditionFailedError):
        flip_production_pointer(store, _pointer("m-3"), first)  # read before m-2 was promoted
    assert read_production_pointer(store)[0].version == "m-2"


def test_published_versions_are_immutable_and_fetched_once(store, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    version = new_version_id()
    publish_model(store, model_dir, version, {"accuracy": 0.9})

    with pytest.raises(PreconditionFailedError):
        publish_model(store, model_dir, version, {"accuracy": 0.1})
    cached = fetch_model(store, version, tmp_path / "cache")
    assert (cached / "model.safetensors").read_bytes() == b"weights"
    assert '"accuracy": 0.9' in (cached / "metrics.json").read_text()
    assert fetch_model(store, version, tmp_path / "cache") == cached
    with pytest.raises(FileNotFoundError, match="m-missing"):
        fetch_model(store, "m-missing", tmp_path / "cache")


def test_version_ids_are_unique_and_sortable_by_time():
    ids = [new_version_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert [identifier[:24] for identifier in ids] == sorted(identifier[:24] for identifier in ids)


def test_the_history_returns_the_latest_decision(store):
    assert last_decision(store) is None
    for run_id, dataset in (("run-1", "ds-1"), ("run-2", "ds-2")):
        record_decision(
            store,
            DecisionRecord(
                run_id=run_id,
                decided_at=datetime.now(UTC),
                dataset_version=dataset,
                challenger_version="m",
                challenger_accuracy=0.5,
                champion_version=None,
                champion_accuracy=None,
                promoted=True,
                reasons=["r"],
            ),
        )
    assert last_decision(store).run_id == "run-2"
