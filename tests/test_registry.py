"""The registry: immutable versions, a compare-and-swap production pointer, history, rollback."""

import hashlib
import json
import threading

import numpy as np
import pytest

import tasks.registry as registry
from retrainer.storage import PreconditionFailedError
from tasks.registry import (
    CorruptVersionError,
    fetch_model,
    fetch_model_task,
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
from tests.registry_helpers import damage
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


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_weights_object_is_named_never_cached_and_fetched_again_once_restored(
    any_store, tmp_path, how
):
    store = any_store  # SeaweedFS and the folder store
    _publish(store, tmp_path, "m-1")
    _promote(store, "m-1", None)
    key = "models/m-1/model.safetensors"
    original = damage(store, key, how)
    cache = tmp_path / "cache"

    with pytest.raises(CorruptVersionError) as corrupt:
        fetch_model(store, "m-1", cache)

    differs = "is 1 bytes, 3 recorded at publish" if how == "truncate" else "has sha256"
    message = str(corrupt.value)
    assert message.startswith(f"model version m-1 is corrupt: {store.uri(key)} {differs}"), message
    assert message.endswith("or move production to a servable version with `retrainer rollback`")
    assert "\n" not in message
    assert not cache.exists() or not list(cache.iterdir())  # nothing cached, no staging left
    [row] = list_versions(store)
    # Listing compares sizes only: a truncation shows; a same-size flip is found by the loaders.
    assert row.status == ("corrupt" if how == "truncate" else "production")

    store.put(key, original)  # restored

    assert (fetch_model(store, "m-1", cache) / "model.safetensors").read_bytes() == original
    assert list_versions(store)[0].status == "production"


def test_a_damaged_cached_copy_is_dropped_and_fetched_again(store, tmp_path):
    _publish(store, tmp_path, "m-1")
    cache = tmp_path / "cache"
    cached = fetch_model(store, "m-1", cache)
    (cached / "model.safetensors").write_bytes(b"m-0")  # same size, other bytes (a bad disk, an old bug)

    assert (fetch_model(store, "m-1", cache) / "model.safetensors").read_bytes() == b"m-1"
    (cached / "extra.bin").write_bytes(b"x")  # a file the version does not have
    assert not (fetch_model(store, "m-1", cache) / "extra.bin").exists()


def test_a_version_damaged_after_it_was_cached_is_refused_though_the_cache_is_intact(store, tmp_path):
    _publish(store, tmp_path, "m-1")
    cache = tmp_path / "cache"
    fetch_model(store, "m-1", cache)
    store.delete("models/m-1/model.safetensors")

    with pytest.raises(CorruptVersionError, match=r"models/m-1/model.safetensors is missing"):
        fetch_model(store, "m-1", cache)  # the store is the truth: another host could not load it
    assert list_versions(store)[0].problem == f"{store.uri('models/m-1/model.safetensors')} is missing"


def test_an_unrecorded_object_or_a_broken_metrics_file_makes_a_version_corrupt(store, tmp_path):
    for version in ("m-1", "m-2"):
        _publish(store, tmp_path, version)
    store.put("models/m-1/pytorch_model.bin", b"slipped in")
    store.put("models/m-2/metrics.json", b'{"accuracy": 0.8, "files": {')

    rows = {row.version: row for row in list_versions(store)}

    assert rows["m-1"].problem == f"{store.uri('models/m-1/pytorch_model.bin')} was not recorded at publish"
    assert rows["m-2"].problem == f"{store.uri('models/m-2/metrics.json')}: it is not valid JSON"
    assert {row.status for row in rows.values()} == {"corrupt"}
    for version in ("m-1", "m-2"):
        with pytest.raises(CorruptVersionError, match=f"model version {version} is corrupt"):
            fetch_model(store, version, tmp_path / "cache")


def test_a_version_published_before_digests_is_verified_by_loading(store, tmp_path):
    """Versions published before this change record no digests: their sizes are checked against the
    listing and their safetensors and JSON files are loaded, so a truncation is caught there too."""
    from safetensors.numpy import save_file

    folder = tmp_path / "m-old"
    folder.mkdir()
    save_file({"weight": np.arange(256, dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    store.upload_dir(folder, "models/m-old/")  # as publish_model wrote it before: no "files" record
    store.put("models/m-old/metrics.json", b'{"accuracy": 0.7}')
    cache = tmp_path / "cache"
    cached = fetch_model(store, "m-old", cache)
    (cached / "model.safetensors").write_bytes(b"\0" * 100)  # a bad copy the old code cached for good
    assert fetch_model(store, "m-old", cache) == cached
    assert (cached / "model.safetensors").stat().st_size == (folder / "model.safetensors").stat().st_size

    original = damage(store, "models/m-old/model.safetensors", "truncate")
    with pytest.raises(CorruptVersionError, match=r"model.safetensors does not load: .*header"):
        fetch_model(store, "m-old", tmp_path / "fresh-cache")
    assert list_versions(store)[0].status == "interrupted"  # no record to compare a listing with
    store.put("models/m-old/model.safetensors", original)
    assert fetch_model(store, "m-old", tmp_path / "fresh-cache").is_dir()


def test_publish_records_the_size_and_sha256_of_every_file(store, tmp_path):
    _publish(store, tmp_path, "m-1")

    metrics = json.loads(store.get("models/m-1/metrics.json")[0])

    assert metrics["files"] == {
        "model.safetensors": {"size": 3, "sha256": hashlib.sha256(b"m-1").hexdigest()}
    }


def test_a_corrupt_version_is_read_once_not_retried_like_a_transient_failure(
    store, tmp_path, prefect_api, monkeypatch
):
    _publish(store, tmp_path, "m-1")
    damage(store, "models/m-1/model.safetensors", "truncate")
    reads = []
    real_read_published = registry.read_published
    monkeypatch.setattr(
        registry, "read_published", lambda *args: reads.append(args) or real_read_published(*args)
    )

    with pytest.raises(CorruptVersionError):
        fetch_model_task(store, "m-1", tmp_path / "cache")  # a read task: retried on other failures

    assert len(reads) == 1
