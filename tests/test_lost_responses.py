"""Writes that succeeded but whose answer was lost (issue 35, item 3): the registry, ingestion and a
whole run report them as done, through the fault proxy (tests/fault_proxy.py) in front of SeaweedFS."""

import json

import pytest

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import retrain
from retrainer.resources import Resources
from retrainer.storage import PreconditionFailedError
from tasks.manifest import Manifest, commit_manifest, manifest_key, read_manifest
from tasks.registry import (
    METRICS_FILE,
    flip_production_pointer,
    pointer_key,
    publish_model,
    read_history,
    read_production_pointer,
    version_prefix,
)
from tests.fault_proxy import when
from tests.registry_helpers import pointer_to
from tests.retrain_process import QUICK

pytestmark = pytest.mark.s3


def _dropped_once(proxy, key: str) -> list:
    return [seen.outcome for seen in proxy.seen(when(method="PUT", key=key))]


def test_a_pointer_flip_whose_answer_was_lost_is_a_flip(proxied_store, fault_proxy, store):
    flip_production_pointer(store, pointer_to("m-1"), None)
    _, etag = read_production_pointer(store)
    fault_proxy.drop_response(when(method="PUT", key=pointer_key(store)))

    new_etag = flip_production_pointer(proxied_store, pointer_to("m-2", "m-1"), etag)

    assert _dropped_once(fault_proxy, pointer_key(store)) == ["dropped", 412]
    pointer, current = read_production_pointer(store)
    assert pointer.version == "m-2" and current == new_etag


def test_a_pointer_flip_that_lost_the_race_and_its_answer_still_lost(proxied_store, fault_proxy, store):
    flip_production_pointer(store, pointer_to("m-1"), None)
    _, stale = read_production_pointer(store)
    flip_production_pointer(store, pointer_to("m-3", "m-1"), stale)  # another run won meanwhile
    fault_proxy.drop_response(when(method="PUT", key=pointer_key(store)))

    with pytest.raises(PreconditionFailedError):
        flip_production_pointer(proxied_store, pointer_to("m-2", "m-1"), stale)
    assert read_production_pointer(store)[0].version == "m-3"


def test_a_published_version_whose_metrics_answer_was_lost_is_complete(
    proxied_store, fault_proxy, store, tmp_path
):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    metrics = version_prefix(store, "m-1") + METRICS_FILE
    fault_proxy.drop_response(when(method="PUT", key=metrics))

    publish_model(proxied_store, tmp_path, "m-1", {"accuracy": 0.9})

    assert _dropped_once(fault_proxy, metrics) == ["dropped", 412]
    assert json.loads(store.get(metrics)[0])["accuracy"] == 0.9


@pytest.mark.parametrize("first", [True, False], ids=["create", "replace"])
def test_a_manifest_commit_whose_answer_was_lost_is_committed(proxied_store, fault_proxy, store, first):
    expected = None if first else commit_manifest(store, Manifest(), None)
    fault_proxy.drop_response(when(method="PUT", key=manifest_key(store)))

    etag = commit_manifest(proxied_store, Manifest(dataset_version="d-1"), expected)

    manifest, current = read_manifest(store)
    assert manifest.dataset_version == "d-1" and current == etag


def test_a_run_whose_pointer_flip_answer_was_lost_reports_promoted_and_records_it(
    run_resources, fault_proxy, proxied_store, store
):
    store.put("incoming/a.csv", tickets_to_csv(generate_tickets(150, seed=1, id_prefix="a")))
    proxied = run_resources.settings.model_copy(update={"s3": proxied_store.settings})
    fault_proxy.drop_response(when(method="PUT", key=pointer_key(store)))

    outcome = retrain(resources=Resources(proxied, proxied_store), training=QUICK)

    assert _dropped_once(fault_proxy, pointer_key(store)) == ["dropped", 412]
    assert outcome.status == "promoted", outcome
    pointer, _ = read_production_pointer(store)
    [promotion] = [record for record in read_history(store) if record.action == "promoted"]
    assert pointer.version == outcome.production_version == promotion.production_version
    assert promotion.previous_version is None  # the pointer is the end of the history's chain
