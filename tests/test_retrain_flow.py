"""The retrain flow end to end: real SeaweedFS, a real Prefect API, a tiny random BERT."""

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.retrain import retrain
from retrainer import LABELS
from retrainer.samples import generate_tickets, tickets_to_csv
from retrainer.settings import TrainingConfig
from retrainer.storage import ObjectStore
from tasks.evaluate import predict_label_ids
from tasks.ingest import read_manifest
from tasks.registry import fetch_model, read_production_pointer
from tasks.report import DECISION_ARTIFACT_KEY

LEARNS = TrainingConfig(learning_rate=5e-3, num_train_epochs=4)
LEARNS_NOTHING = TrainingConfig(learning_rate=0.0, num_train_epochs=1)  # the random head stays random


@pytest.fixture
def flow_store(retrain_env) -> ObjectStore:
    store = ObjectStore(retrain_env)
    store.ensure_bucket()
    return store


def _drop_batch(store: ObjectStore, name: str, count: int, seed: int) -> None:
    store.put(f"incoming/{name}", tickets_to_csv(generate_tickets(count, seed=seed, id_prefix=name)))


def _model_versions(store: ObjectStore) -> set[str]:
    names = {info.key.split("/")[1] for info in store.list_objects("models/m-")}
    return names


def test_first_run_publishes_a_loadable_safetensors_model(flow_store, tmp_path):
    _drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    flow_store.put("incoming/broken.csv", b"ticket_id,text,label\nX-1,crash,bug\nX-2,,bug\nX-3,hi,spam\n")

    outcome = retrain(training=LEARNS)

    assert outcome.status == "promoted"
    assert (outcome.batches_ingested, outcome.rows_accepted, outcome.rows_quarantined) == (2, 301, 2)
    pointer, _ = read_production_pointer(flow_store)
    assert pointer.version == outcome.challenger_version == outcome.production_version
    files = {info.key.rsplit("/", 1)[1] for info in flow_store.list_objects(f"models/{pointer.version}/")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pth"))]
    model_dir = fetch_model(flow_store, pointer.version, tmp_path / "cache")
    predictions = predict_label_ids(model_dir, ["The app crashes on save", "Please add dark mode"], 64)
    assert all(0 <= label_id < len(LABELS) for label_id in predictions)
    manifest, _ = read_manifest(flow_store)
    assert manifest.objects["incoming/broken.csv"].quarantined == 2
    assert flow_store.list_objects(f"quarantine/{outcome.run_id}/broken.csv")
    assert "promoted" in _latest_report_markdown()


def test_a_second_run_without_new_objects_ingests_nothing(flow_store):
    _drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    first = retrain(training=LEARNS)
    manifest_etag = read_manifest(flow_store)[1]

    second = retrain(training=LEARNS)

    assert second.status == "no-new-data"
    assert second.batches_ingested == 0 and second.challenger_version is None
    assert read_manifest(flow_store)[1] == manifest_etag
    assert _model_versions(flow_store) == {first.challenger_version}


def test_a_worse_challenger_is_not_published_and_the_pointer_is_unchanged(flow_store):
    _drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    champion = retrain(training=LEARNS)
    pointer_before = read_production_pointer(flow_store)
    _drop_batch(flow_store, "batch-2.csv", 150, seed=2)

    outcome = retrain(training=LEARNS_NOTHING)

    assert outcome.status == "kept"
    assert outcome.batches_ingested == 1
    assert outcome.champion_version == champion.challenger_version
    assert outcome.challenger_accuracy < outcome.champion_accuracy
    assert read_production_pointer(flow_store) == pointer_before
    assert _model_versions(flow_store) == {champion.challenger_version}


def test_a_better_challenger_is_published_and_the_old_version_is_kept(flow_store):
    _drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    weak = retrain(training=LEARNS_NOTHING)
    _drop_batch(flow_store, "batch-2.csv", 150, seed=2)

    outcome = retrain(training=LEARNS)

    assert outcome.status == "promoted"
    assert outcome.challenger_accuracy > outcome.champion_accuracy
    assert outcome.champion_version == weak.challenger_version
    assert read_production_pointer(flow_store)[0].version == outcome.challenger_version
    assert _model_versions(flow_store) == {weak.challenger_version, outcome.challenger_version}


def _latest_report_markdown() -> str:
    async def read() -> str:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DECISION_ARTIFACT_KEY])),
                sort="CREATED_DESC",
                limit=1,
            )
            return artifacts[0].data

    return asyncio.run(read())
