"""The registry: immutable versions, a compare-and-swap production pointer, history, rollback."""

import json
import threading

import pytest

from retrainer.storage import PreconditionFailedError
from tasks.registry import (
    fetch_model,
    flip_production_pointer,
    last_gate_decision,
    list_versions,
    new_version_id,
    publish_model,
    read_history,
    read_production_pointer,
    record_decision,
    rollback,
)
from tests.registry_helpers import decision as _record
from tests.registry_helpers import pointer_to as _pointer
from tests.registry_helpers import promote as _promote
from tests.registry_helpers import publish_fake_version as _publish


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


@pytest.mark.parametrize("round_", range(3))
def test_two_racing_promotions_exactly_one_wins(store, round_):
    _, etag = read_production_pointer(store)
    if etag is None:
        etag = flip_production_pointer(store, _pointer("m-champion"), None)
    start = threading.Barrier(2)
    results: dict[str, str] = {}

    def promote(version: str) -> None:
        start.wait()
        try:
            flip_production_pointer(store, _pointer(version, "m-champion"), etag)
            results[version] = "won"
        except PreconditionFailedError:
            results[version] = "lost"

    threads = [threading.Thread(target=promote, args=(name,)) for name in ("m-a", "m-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results.values()) == ["lost", "won"]
    winner = next(version for version, result in results.items() if result == "won")
    assert read_production_pointer(store)[0].version == winner


def test_published_versions_are_immutable_complete_and_fetched_once(store, tmp_path):
    version = new_version_id()
    _publish(store, tmp_path, version, 0.9)

    with pytest.raises(PreconditionFailedError):
        publish_model(store, tmp_path / version, version, {"accuracy": 0.1})
    cached = fetch_model(store, version, tmp_path / "cache")
    assert (cached / "model.safetensors").read_bytes() == version.encode()
    assert json.loads((cached / "metrics.json").read_text())["accuracy"] == 0.9
    assert fetch_model(store, version, tmp_path / "cache") == cached
    with pytest.raises(FileNotFoundError, match="m-missing"):
        fetch_model(store, "m-missing", tmp_path / "cache")


def test_list_versions_shows_metrics_and_production_and_skips_incomplete_uploads(store, tmp_path):
    _publish(store, tmp_path, "m-1", 0.8)
    _publish(store, tmp_path, "m-2", 0.9)
    store.put("models/m-3/model.safetensors", b"died before metrics.json")  # a crashed upload
    _promote(store, "m-2", None)

    rows = list_versions(store)

    assert [(row.version, row.accuracy, row.in_production) for row in rows] == [
        ("m-1", 0.8, False),
        ("m-2", 0.9, True),
    ]


def test_rollback_walks_back_the_promotion_lineage_and_is_recorded(store, tmp_path):
    for version in ("m-1", "m-2", "m-3"):
        _publish(store, tmp_path, version, 0.5)
    _promote(store, "m-1", None)
    _promote(store, "m-2", "m-1")
    _promote(store, "m-3", "m-2")

    assert rollback(store, "bad predictions on billing tickets").version == "m-2"
    assert rollback(store, "still bad").version == "m-1"
    with pytest.raises(ValueError, match="no earlier production version"):
        rollback(store, "nothing older")
    assert rollback(store, "back to the newest", to_version="m-3").version == "m-3"

    history = read_history(store)
    assert [record.action for record in history[-3:]] == ["rolled-back"] * 3
    assert "bad predictions on billing tickets" in history[3].reasons[0]
    assert last_gate_decision(store).challenger_version == "m-3"  # rollbacks are not gate decisions


def test_rollback_refuses_unknown_current_and_smoke_failed_targets(store, tmp_path):
    with pytest.raises(ValueError, match="no model is in production"):
        rollback(store, "x")
    for version in ("m-1", "m-2"):
        _publish(store, tmp_path, version, 0.5)
    _promote(store, "m-1", None)
    record_decision(store, _record("smoke-failed", "m-2", production="m-1", previous="m-1"))

    with pytest.raises(ValueError, match="failed its smoke test"):
        rollback(store, "x", to_version="m-2")
    with pytest.raises(ValueError, match="already in production"):
        rollback(store, "x", to_version="m-1")
    with pytest.raises(ValueError, match="not a published model version"):
        rollback(store, "x", to_version="m-nope")
    assert read_production_pointer(store)[0].version == "m-1"


def test_version_ids_are_unique_and_sortable_by_time():
    ids = [new_version_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert [identifier[:24] for identifier in ids] == sorted(identifier[:24] for identifier in ids)
