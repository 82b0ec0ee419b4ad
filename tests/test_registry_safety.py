"""Only smoke-tested versions may serve; a lost race reports who really is in production (real SeaweedFS)."""

import pytest

import tasks.registry as registry
from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import failed_record, retrain, smoke_and_flip
from retrainer.records import RunRecord
from retrainer.resources import Resources
from retrainer.run_steps import Production
from retrainer.settings import GatePolicy
from retrainer.storage import PreconditionFailedError
from tasks.registry import (
    CorruptVersionError,
    RegistryError,
    list_versions,
    publish_model,
    read_history,
    read_production_pointer,
    record_decision,
    rollback,
)
from tasks.smoke import smoke_test
from tests.registry_helpers import damage
from tests.registry_helpers import decision as _record
from tests.registry_helpers import labelled_copy as _labelled_copy
from tests.registry_helpers import promote as _promote
from tests.registry_helpers import publish_fake_version as _publish


def test_a_version_published_by_an_interrupted_run_is_listed_as_such_and_never_rolled_back_to(
    store, tmp_path
):
    for version in ("m-1", "m-2", "m-interrupted"):
        _publish(store, tmp_path, version)
    _promote(store, "m-1", None)
    _promote(store, "m-2", "m-1")
    # m-interrupted: metrics.json landed, then the run was killed before its smoke test decided.

    statuses = {row.version: row.status for row in list_versions(store)}

    assert statuses == {"m-1": "servable", "m-2": "production", "m-interrupted": "interrupted"}
    with pytest.raises(RegistryError) as refused:
        rollback(store, "x", to_version="m-interrupted")
    assert str(refused.value) == (
        "m-interrupted never passed its smoke test (interrupted run): it may not serve production"
    )
    assert read_production_pointer(store)[0].version == "m-2"
    assert [record.action for record in read_history(store)] == ["promoted", "promoted"]  # nothing recorded


def test_smoke_failed_lost_race_and_crashed_before_record_versions_get_their_status(store, tmp_path):
    for version in ("m-1", "m-2", "m-smoke-failed", "m-lost-race"):
        _publish(store, tmp_path, version)
    _promote(store, "m-1", None, record=False)  # crashed between flip and record: it did serve
    _promote(store, "m-2", "m-1")
    record_decision(store, _record("smoke-failed", "m-smoke-failed", production="m-2", previous="m-2"))
    record_decision(store, _record("lost-race", "m-lost-race", production="m-2", previous="m-2"))

    statuses = {row.version: row.status for row in list_versions(store)}

    assert statuses == {
        "m-1": "servable",
        "m-2": "production",
        "m-smoke-failed": "smoke-failed",
        "m-lost-race": "servable",
    }
    with pytest.raises(RegistryError, match="m-smoke-failed failed its smoke test"):
        rollback(store, "x", to_version="m-smoke-failed")
    assert rollback(store, "lost the race but passed", to_version="m-lost-race").version == "m-lost-race"
    assert rollback(store, "back to the first", to_version="m-1").version == "m-1"
    assert {row.version: row.status for row in list_versions(store)}["m-lost-race"] == "servable"


def test_list_versions_reads_each_history_record_once_not_once_per_version(store, tmp_path):
    versions = [f"m-{n}" for n in range(4)]
    previous = None
    for version in versions:
        _publish(store, tmp_path, version)
        _promote(store, version, previous)
        previous = version
    record_keys = {info.key for info in store.list_objects("models/history/")}
    history_reads = []
    real_get = store.get

    def counting_get(key: str):
        if key in record_keys:
            history_reads.append(key)
        return real_get(key)

    store.get = counting_get

    rows = list_versions(store)

    assert [row.status for row in rows] == ["servable"] * 3 + ["production"]
    assert sorted(history_reads) == sorted(record_keys)  # each record once, whatever the version count


def test_a_rollback_that_loses_the_pointer_race_changes_nothing_and_says_so(store, tmp_path, monkeypatch):
    for version in ("m-1", "m-2", "m-3"):
        _publish(store, tmp_path, version)
    _promote(store, "m-1", None)
    _promote(store, "m-2", "m-1")
    real_read_history = registry.read_history

    def history_then_another_promotion(store_):
        history = real_read_history(store_)
        _promote(store_, "m-3", "m-2")  # another run flips the pointer after the rollback read it
        return history

    monkeypatch.setattr(registry, "read_history", history_then_another_promotion)

    with pytest.raises(PreconditionFailedError, match="production changed while rolling back to m-1"):
        rollback(store, "x")
    assert read_production_pointer(store)[0].version == "m-3"


def test_a_lost_race_reports_the_version_that_is_really_in_production(
    run_resources, tiny_model_dir, tmp_path
):
    store = run_resources.store
    for version in ("m-old", "m-winner", "m-loser"):
        _labelled_copy(tiny_model_dir, tmp_path / version)
        publish_model(store, tmp_path / version, version, {"accuracy": 0.5})
    _promote(store, "m-old", None)
    stale_pointer, stale_etag = read_production_pointer(store)  # what the losing run read at its start
    _promote(store, "m-winner", "m-old")  # another run flips first
    settings = run_resources.settings.with_overrides(
        gate=GatePolicy(min_canary_accuracy=0.0)
    )  # a random model passes
    gated = RunRecord(
        status="kept", run_id="run-loser", challenger_version="m-loser", production_version="m-old"
    )

    outcome = smoke_and_flip(
        Resources(settings, store), gated, tmp_path / "m-loser", Production(stale_pointer, stale_etag), []
    )

    assert outcome.status == "lost-race", outcome.reasons
    assert outcome.production_version == "m-winner"  # not the stale champion m-old
    assert "production is now m-winner" in outcome.reasons[-1] and "changed nothing" in outcome.reasons[-1]
    assert read_production_pointer(store)[0].version == "m-winner"


def test_rollback_refuses_a_corrupt_target_and_changes_nothing(store, tmp_path):
    for version in ("m-1", "m-2"):
        _publish(store, tmp_path, version)
    _promote(store, "m-1", None)
    _promote(store, "m-2", "m-1")
    damage(store, "models/m-1/model.safetensors", "flip")  # same size: only a full check finds it

    with pytest.raises(RegistryError) as refused:
        rollback(store, "m-2 misbehaves")

    weights = store.uri("models/m-1/model.safetensors")
    assert str(refused.value).startswith(f"m-1 is corrupt and may not serve production: {weights} has sha256")
    assert read_production_pointer(store)[0].version == "m-2"
    assert [record.action for record in read_history(store)] == ["promoted", "promoted"]


def test_the_smoke_test_checks_the_published_files_against_their_digests(store, tiny_model_dir, tmp_path):
    _labelled_copy(tiny_model_dir, tmp_path / "m-1")
    publish_model(store, tmp_path / "m-1", "m-1", {"accuracy": 0.5})
    # One flipped bit in the last weight: the model still loads and predicts as the one trained.
    damage(store, "models/m-1/model.safetensors", "flip")

    result = smoke_test(store, "m-1", tmp_path / "m-1", tmp_path, 64, min_canary_accuracy=0.0)

    assert not result.passed
    weights = store.uri("models/m-1/model.safetensors")
    assert result.reasons[0].startswith(f"smoke test: m-1 is corrupt as stored: {weights} has sha256")


def test_a_run_that_meets_a_corrupt_champion_fails_alerting_the_version_and_the_remedy(
    run_resources, tiny_model_dir, tmp_path, webhook
):
    store = run_resources.store
    _labelled_copy(tiny_model_dir, tmp_path / "m-champion")
    publish_model(store, tmp_path / "m-champion", "m-champion", {"accuracy": 0.5})
    _promote(store, "m-champion", None)
    damage(store, "models/m-champion/model.safetensors", "truncate")
    store.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(60, seed=1, id_prefix="b1")))
    settings = run_resources.settings.model_copy(update={"notification_block": webhook.block})

    with pytest.raises(CorruptVersionError) as failed:
        retrain(resources=Resources(settings, store))

    weights = store.uri("models/m-champion/model.safetensors")
    record = failed_record(failed.value)
    assert record.status == "failed"
    assert record.reasons[-1].startswith(f"model version m-champion is corrupt: {weights} is ")
    assert record.reasons[-1].endswith("`retrainer rollback`")
    [alert] = webhook.payloads
    assert alert["subject"].startswith("ticket-retrainer: production model m-champion is CORRUPT")
    assert weights in alert["text"] and "`retrainer rollback`" in alert["text"]
    assert read_production_pointer(store)[0].version == "m-champion"  # nothing promoted over it
    assert [row.version for row in list_versions(store)] == ["m-champion"]  # nothing published
    assert list_versions(store)[0].status == "corrupt"
