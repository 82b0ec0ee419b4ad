"""The retrain flow end to end: real SeaweedFS, a real Prefect API, a tiny random BERT."""

import asyncio
import io
import json
import shutil
import time
import uuid
from dataclasses import dataclass

import pandas as pd
import pytest
import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, ArtifactFilterType

from flows.retrain import retrain, smoke_and_flip
from retrainer.core.labels import LABELS
from retrainer.core.scoring import predict_label_ids
from retrainer.records import RunRecord
from retrainer.resources import Resources
from retrainer.run_steps import Production
from retrainer.settings import GatePolicy, RetrainerSettings, S3Settings, TrainingConfig
from retrainer.storage import FolderStore, ObjectStore, S3Store, open_store
from tasks.manifest import read_manifest
from tasks.registry import fetch_model, list_versions, publish_model, read_history, read_production_pointer
from tasks.report import DECISION_ARTIFACT_KEY
from tests.http_receiver import Receiver, webhook_receiver
from tests.tickets import drop_batch

# Two epochs: the published blend learns the tickets through its lexical half whatever the epochs, and
# every assertion here compares it with a model that learns nothing (four took ~20 s more a run).
LEARNS = TrainingConfig(learning_rate=5e-3, num_train_epochs=2)
# The random head stays random, and no lexical half learns the tickets either.
LEARNS_NOTHING = TrainingConfig(learning_rate=0.0, num_train_epochs=1, lexical_weight=0.0)
NO_RECALL_GUARD = GatePolicy(max_recall_drop=1.0)  # a random champion can have recall 1.0 on one class


@pytest.fixture
def flow_store(run_resources) -> ObjectStore:
    return run_resources.store


def _notifying(resources: Resources, block: str) -> Resources:
    """`resources` whose settings send each run's summary through the notification block `block`."""
    return Resources(resources.settings.model_copy(update={"notification_block": block}), resources.store)


def _model_versions(store: ObjectStore) -> set[str]:
    return {row.version for row in list_versions(store)}


@dataclass(frozen=True)
class FirstRun:
    """A first run on an empty registry, and what the Prefect API and a receiver got from it."""

    store: ObjectStore
    outcome: RunRecord
    report: str  # the decision artifact's markdown
    progress: float  # the last value of the progress artifact
    payloads: list[dict]  # what the notification block delivered


@pytest.fixture(scope="module")
def first_run(local_s3, tiny_model_dir, tmp_path_factory, prefect_api) -> FirstRun:
    """One first run, read by the three tests below (each trained the same model on the same tickets):
    300 good tickets and a batch with one bad row, its summary sent through a notification block to a
    real receiver. The API's latest artifacts are read at once, before another test's run."""
    bucket = S3Settings(endpoint_url=local_s3.endpoint_url, bucket=f"t-{uuid.uuid4().hex[:16]}")
    store = S3Store(bucket)
    store.ensure_bucket()
    drop_batch(store, "batch-1.csv", 300, seed=1)
    mostly_good = "ticket_id,text,label\n" + "".join(
        f"X-{n},Crash number {n} on save,bug\n" for n in range(9)
    )
    store.put("incoming/broken.csv", (mostly_good + "X-9,,bug\n").encode())  # 10% bad: under the limit
    work_dir = tmp_path_factory.mktemp("first-run") / "work"
    with webhook_receiver() as receiver:
        settings = RetrainerSettings(
            s3=bucket, base_model=str(tiny_model_dir), work_dir=work_dir, notification_block=receiver.block
        )
        outcome = retrain(resources=Resources(settings, store), training=LEARNS)
    return FirstRun(store, outcome, _latest_report_markdown(), _latest_progress(), receiver.payloads)


def test_first_run_publishes_a_loadable_safetensors_model_with_card_and_reports(first_run, tmp_path):
    flow_store, outcome = first_run.store, first_run.outcome

    assert outcome.status == "promoted"
    assert (outcome.batches_ingested, outcome.rows_accepted, outcome.rows_quarantined) == (2, 309, 1)
    pointer, _ = read_production_pointer(flow_store)
    assert pointer.version == outcome.challenger_version == outcome.production_version
    files = {info.key.split("/", 2)[2] for info in flow_store.list_objects(f"models/{pointer.version}/")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "README.md"} <= files
    assert {"lexical.json", "lexical.safetensors"} <= files  # the TF-IDF half, no pickle either
    assert {"reports/confusion_matrix.png", "reports/production_accuracy.png"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pth"))]
    model_dir = fetch_model(flow_store, pointer.version, tmp_path / "cache")
    predictions = predict_label_ids(model_dir, ["The app crashes on save", "Please add dark mode"], 64)
    assert all(0 <= label_id < len(LABELS) for label_id in predictions)
    assert (model_dir / "reports" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    manifest, _ = read_manifest(flow_store)
    assert manifest.objects["incoming/broken.csv"].quarantined == 1
    assert flow_store.list_objects(f"quarantine/{outcome.run_id}/broken.csv")
    report = first_run.report
    assert "**promoted**" in report and "McNemar" in report and "recall" in report
    assert flow_store.list_objects("runs/") == []  # checkpoints and the challenger copy went once published
    assert first_run.progress == 100.0  # the Trainer's progress reached the Prefect progress artifact


def test_the_model_card_records_metrics_lineage_and_recipe(first_run):
    flow_store, outcome = first_run.store, first_run.outcome

    card = flow_store.get(f"models/{outcome.challenger_version}/README.md")[0].decode()
    header = yaml.safe_load(card.split("---\n")[1])

    assert header["labels"] == list(LABELS)
    metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(outcome.challenger_accuracy, abs=1e-6)
    details = header["ticket_retrainer"]
    etags = {key: entry.etag for key, entry in read_manifest(flow_store)[0].objects.items()}
    assert details["lineage"] == [
        {"key": "incoming/batch-1.csv", "etag": etags["incoming/batch-1.csv"], "rows": 300},
        {"key": "incoming/broken.csv", "etag": etags["incoming/broken.csv"], "rows": 9},  # not its bad row
    ]
    assert details["training"]["learning_rate"] == LEARNS.learning_rate
    lexical_half = json.loads(flow_store.get(f"models/{outcome.challenger_version}/metrics.json")[0])[
        "lexical_half"
    ]
    assert lexical_half["blend_weight"] == 0.6
    temperature = lexical_half["transformer_temperature"]
    assert f"logits divided by {temperature:.2f}, the temperature fitted on the validation split" in card
    assert "with 0.6 of a TF-IDF + logistic-regression model" in card
    assert details["dataset_version"] == outcome.dataset_version
    assert details["code_version"].startswith("0.1.0") and "torch" in details["library_versions"]


def test_the_decision_summary_is_sent_through_the_configured_notification_block(first_run):
    outcome = first_run.outcome

    [payload] = first_run.payloads
    assert payload["subject"] == f"ticket-retrainer: promoted (run {outcome.run_id})"
    assert f"{outcome.challenger_accuracy:.4f}" in payload["text"] and "no champion yet" in payload["text"]


def test_a_second_run_without_new_objects_ingests_nothing(flow_store, run_resources):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    first = retrain(resources=run_resources, training=LEARNS)
    manifest_etag = read_manifest(flow_store)[1]

    second = retrain(resources=run_resources, training=LEARNS)

    assert second.status == "no-new-data"
    assert second.batches_ingested == 0 and second.challenger_version is None
    assert read_manifest(flow_store)[1] == manifest_etag
    assert _model_versions(flow_store) == {first.challenger_version}
    # Asked for (e.g. from the UI), a full retrain runs on the same data, from the base model.
    third = retrain(resources=run_resources, training=LEARNS_NOTHING, full_retrain=True)
    assert third.status == "kept" and third.dataset_version == first.dataset_version
    assert third.training_plan.mode == "full" and "requested" in third.training_plan.reason
    # The injected resources are in Prefect's database by name only: no settings, no store client.
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(first.run_id).parameters["resources"] == "<Resources>"


def test_a_worse_challenger_is_not_published_unless_forced_with_a_reason_which_is_audited(
    flow_store, run_resources
):
    """One champion for both halves (each trained its own): a worse challenger is kept out, then a worse
    one on the next batch is promoted only when forced, with a reason."""
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    champion = retrain(resources=run_resources, training=LEARNS)
    pointer_before = read_production_pointer(flow_store)
    drop_batch(flow_store, "batch-2.csv", 150, seed=2)

    outcome = retrain(resources=run_resources, training=LEARNS_NOTHING)

    assert outcome.status == "kept"
    assert outcome.batches_ingested == 1
    assert outcome.champion_version == champion.challenger_version
    assert outcome.challenger_accuracy < outcome.champion_accuracy
    assert outcome.challenger_new_data.examples == outcome.champion_new_data.examples > 0
    assert read_production_pointer(flow_store) == pointer_before
    assert _model_versions(flow_store) == {champion.challenger_version}
    assert flow_store.list_objects(f"reports/{outcome.run_id}/confusion_matrix.png")
    assert read_history(flow_store)[-1].action == "kept"
    left = {info.key.split("/")[1] for info in flow_store.list_objects("runs/")}
    assert left == {outcome.run_id}  # the rejected challenger waits for the lifecycle rule; no checkpoints

    # Forced: refused without a reason; with one, the worse challenger of the next batch is promoted.
    batch_three = drop_batch(flow_store, "batch-3.csv", 150, seed=3)
    with pytest.raises(ValueError, match="force_reason"):
        retrain(resources=run_resources, training=LEARNS_NOTHING, force=True)

    forced = retrain(
        resources=run_resources,
        training=LEARNS_NOTHING,
        force=True,
        force_reason="incident 7: roll the new label set out",
    )

    assert forced.status == "forced"
    assert forced.challenger_accuracy < forced.champion_accuracy  # the rule alone would have kept it
    pointer = read_production_pointer(flow_store)[0]
    assert (pointer.version, pointer.action) == (forced.challenger_version, "forced")
    assert pointer.previous_version == champion.challenger_version
    record = read_history(flow_store)[-1]
    assert (record.action, record.forced_reason) == ("forced", "incident 7: roll the new label set out")
    assert "FORCED" in record.reasons[0]
    # The kept champion computed only what was new since the night before: batch 2's tickets, still new
    # to it (not in its lineage), were scored on night 2 and known on night 3, for the eval and the
    # label check alike.
    night_three = flow_store.get(f"predictions/{champion.challenger_version}/{forced.run_id}.parquet")[0]
    computed = set(pd.read_parquet(io.BytesIO(night_three))["ticket_id"])
    assert computed <= batch_three and len(computed) >= 100  # (a ticket whose text was known: not again)
    assert forced.label_agreement.extra_predictions < forced.label_agreement.new_tickets


def test_a_better_challenger_is_published_and_the_old_version_is_kept_also_without_s3(
    run_resources, tmp_path, prefect_api
):
    """On the local-directory store of a host without S3 (the other flow tests run on SeaweedFS)."""
    settings = run_resources.settings.model_copy(
        update={"s3": S3Settings(endpoint_url=(tmp_path / "objects").as_uri(), bucket="ticket-retrainer")}
    )
    local = Resources(settings, open_store(settings.s3))
    local.store.ensure_bucket()
    drop_batch(local.store, "batch-1.csv", 300, seed=1)
    weak = retrain(resources=local, training=LEARNS_NOTHING)
    batch_two = drop_batch(local.store, "batch-2.csv", 150, seed=2)

    outcome = retrain(resources=local, training=LEARNS, gate=NO_RECALL_GUARD)

    assert isinstance(local.store, FolderStore)
    assert (weak.status, outcome.status) == ("promoted", "promoted")
    assert outcome.challenger_accuracy > outcome.champion_accuracy
    # The second night starts from the champion's weights (the incremental policy, on by default).
    assert weak.training_plan.mode == "full" and "no champion" in weak.training_plan.reason
    assert (outcome.training_plan.mode, outcome.training_plan.warm_start_from) == (
        "incremental",
        weak.challenger_version,
    )
    published = json.loads(local.store.get(f"models/{outcome.challenger_version}/metrics.json")[0])
    assert published["training_plan"] == outcome.training_plan.model_dump()
    trained = json.loads(local.store.get(f"models/{outcome.challenger_version}/training.json")[0])
    assert trained["plan"]["generation"] == 1 and trained["train_rows"] >= 1
    assert outcome.champion_version == weak.challenger_version
    pointer = read_production_pointer(local.store)[0]
    assert (pointer.version, pointer.previous_version) == (
        outcome.challenger_version,
        weak.challenger_version,
    )
    assert _model_versions(local.store) == {weak.challenger_version, outcome.challenger_version}
    # The champion was scored only on the eval tickets new to it: night 1 stored its eval predictions
    # when it was published; night 2 reused them and stored the ones it computed.
    stored = {info.key for info in local.store.list_objects("predictions/")}
    assert stored == {
        f"predictions/{weak.challenger_version}/{weak.run_id}.parquet",
        f"predictions/{weak.challenger_version}/{outcome.run_id}.parquet",
        f"predictions/{outcome.challenger_version}/{outcome.run_id}.parquet",
    }
    assert outcome.champion_reused + outcome.champion_scored == outcome.challenger.examples
    assert outcome.champion_reused >= weak.challenger.examples >= 1  # every eval ticket of night 1
    assert outcome.champion_scored >= 1  # night 2's new eval tickets
    # Night 2 stored what the champion computed: each ticket new to it once (eval and label check).
    night_two = local.store.get(f"predictions/{weak.challenger_version}/{outcome.run_id}.parquet")[0]
    assert sorted(pd.read_parquet(io.BytesIO(night_two))["ticket_id"]) == sorted(batch_two)
    model_dir = fetch_model(local.store, pointer.version, tmp_path / "cache")
    assert len(predict_label_ids(model_dir, ["The app crashes on save"], 64)) == 1
    assert not local.store.list_objects("runs/")  # checkpoints and challenger copies gone once decided
    bucket = tmp_path / "objects" / "ticket-retrainer"
    assert (bucket / "models" / "production.json.~object").is_file()
    assert not [path for path in bucket.rglob("put-*")]  # no half-written object left behind


def test_a_smoke_test_failure_blocks_publication(flow_store, run_resources):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    impossible = GatePolicy(min_canary_accuracy=1.0)  # a random model cannot get all canaries right

    outcome = retrain(resources=run_resources, training=LEARNS_NOTHING, gate=impossible)

    assert outcome.status == "smoke-failed"
    assert read_production_pointer(flow_store) == (None, None)
    assert any("canary accuracy" in reason and "below the required" in reason for reason in outcome.reasons)
    assert read_history(flow_store)[-1].action == "smoke-failed"
    assert (
        retrain(resources=run_resources, training=LEARNS_NOTHING).status == "promoted"
    )  # same data, no champion: the next run tries again


def test_a_crash_between_upload_and_flip_leaves_the_champion_and_the_next_run_works(
    flow_store, run_resources, tmp_path
):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    champion = retrain(resources=run_resources, training=LEARNS_NOTHING)  # any model: it only serves
    # A run that died after uploading (one complete version, one half-uploaded) but before the flip:
    orphan = shutil.copytree(
        fetch_model(flow_store, champion.challenger_version, tmp_path / "c"), tmp_path / "o"
    )
    (orphan / "metrics.json").unlink()
    publish_model(flow_store, orphan, "m-orphan-complete", {"accuracy": 1.0})
    flow_store.put("models/m-orphan-partial/config.json", b"{}")
    assert read_production_pointer(flow_store)[0].version == champion.challenger_version

    drop_batch(flow_store, "batch-2.csv", 150, seed=2)
    outcome = retrain(resources=run_resources, training=LEARNS, gate=NO_RECALL_GUARD)

    assert outcome.status in {"promoted", "kept"}
    assert outcome.champion_version == champion.challenger_version
    assert "m-orphan-partial" not in _model_versions(flow_store)


def test_a_notification_that_cannot_be_delivered_fails_the_run_loudly(flow_store, run_resources):
    drop_batch(flow_store, "batch-1.csv", 60, seed=1)
    with Receiver() as closed:
        url = closed.url  # the port is closed once the receiver stops
    block_name = f"alerts-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(name="retrainer", url=url, allow_private_urls=True).save(block_name)

    with pytest.raises(Exception, match="onnect"):
        retrain(resources=_notifying(run_resources, f"custom-webhook/{block_name}"), training=LEARNS)


def _latest_progress() -> float:
    async def read() -> float:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
                sort="CREATED_DESC",
                limit=1,
            )
            return float(artifacts[0].data)

    return asyncio.run(read())


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


def test_a_run_that_loses_the_promotion_race_reports_it_and_changes_nothing(
    flow_store, run_resources, tmp_path
):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    champion = retrain(resources=run_resources, training=LEARNS_NOTHING)  # any model: it only serves
    pointer, etag_read_by_both = read_production_pointer(flow_store)
    model_dir = fetch_model(flow_store, champion.challenger_version, tmp_path / "cache")
    for racer in ("m-winner", "m-loser"):
        racer_dir = shutil.copytree(model_dir, tmp_path / racer)
        (racer_dir / "metrics.json").unlink()
        publish_model(flow_store, racer_dir, racer, {"accuracy": 0.9})
    # Both read the same pointer ETag before either flipped.
    production = Production(pointer, etag_read_by_both)

    published = {
        racer: smoke_and_flip(
            run_resources,
            RunRecord(status="kept", run_id=racer, challenger_version=racer),
            tmp_path / racer,
            production,
            [],
        )
        for racer in ("m-winner", "m-loser")
    }

    assert (published["m-winner"].status, published["m-loser"].status) == ("promoted", "lost-race")
    assert "changed nothing" in published["m-loser"].reasons[-1]
    assert read_production_pointer(flow_store)[0].version == "m-winner"


def test_a_rejected_batch_fails_the_run_alerts_and_skips_training_but_keeps_the_good_batch(
    flow_store, run_resources, webhook
):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    flow_store.put("incoming/bad.csv", b"ticket_id,label\nB-1,bug\n")  # no text column

    state = retrain(resources=_notifying(run_resources, webhook.block), training=LEARNS, return_state=True)

    assert state.is_failed()
    assert "incoming/bad.csv: missing required column(s) text" in state.message
    [payload] = webhook.payloads
    assert payload["subject"].startswith("ticket-retrainer: validation FAILED")
    assert "incoming/bad.csv: missing required column(s) text (found: ticket_id, label)" in payload["text"]
    assert read_production_pointer(flow_store) == (None, None)  # training was skipped
    assert read_manifest(flow_store)[0].objects["incoming/batch-1.csv"].accepted == 300
    assert _event_payloads("retrainer.validation.failed", "incoming/bad.csv")[0]["reasons"] == [
        "missing required column(s) text (found: ticket_id, label)"
    ]
    assert (
        retrain(resources=run_resources, training=LEARNS).status == "promoted"
    )  # the next run trains on the good batch


def _event_payloads(event: str, batch_key: str) -> list[dict]:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async def read() -> list[dict]:
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={
                    "filter": EventFilter(
                        event=EventNameFilter(name=[event]),
                        resource=EventResourceFilter(id=[f"ticket-retrainer.batch.{batch_key}"]),
                    ).model_dump(mode="json")
                },
            )
            response.raise_for_status()
            return [item["payload"] for item in response.json()["events"]]

    deadline = time.monotonic() + 20  # events reach the API asynchronously
    while not (payloads := asyncio.run(read())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return payloads


def test_a_scratch_delete_that_fails_is_a_warning_and_the_decision_stands(
    flow_store, run_resources, monkeypatch, caplog
):
    from retrainer.storage import StorageError
    from tasks.checkpoints import discard_scratch_task

    def refuse(self, prefix):
        raise StorageError(f"delete of {prefix} refused")

    monkeypatch.setattr(ObjectStore, "delete_scratch", refuse)
    # Without the back-off (1 + 5 + 15 s) of the real task: the retry policy is Prefect's to keep.
    monkeypatch.setattr("flows.retrain.discard_scratch_task", discard_scratch_task.with_options(retries=0))
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)

    outcome = retrain(resources=run_resources, training=LEARNS)

    assert outcome.status == "promoted"
    assert read_production_pointer(flow_store)[0].version == outcome.challenger_version
    assert flow_store.list_objects("runs/checkpoints/")  # left for the lifecycle rule
    assert "run scratch not deleted (the lifecycle rule on runs/ will)" in caplog.text


def test_over_the_eval_bound_both_models_are_scored_on_a_sample_holding_every_new_ticket(
    run_resources, flow_store
):
    drop_batch(flow_store, "batch-1.csv", 300, seed=1)
    first = retrain(resources=run_resources, training=LEARNS)
    drop_batch(flow_store, "batch-2.csv", 150, seed=2)
    bounded = run_resources.settings.model_copy(
        update={"gate": run_resources.settings.gate.model_copy(update={"max_eval_tickets": 40})}
    )

    second = retrain(resources=Resources(bounded, flow_store), training=LEARNS_NOTHING)

    sampling = second.eval_sampling
    assert first.eval_sampling.sampled is False and first.eval_sampling.scored == first.eval_examples
    assert sampling.sampled and sampling.eval_tickets > sampling.scored == max(40, sampling.new)
    assert second.challenger.examples == second.champion.examples == sampling.scored
    assert second.challenger_new_data.examples == second.champion_new_data.examples == sampling.new >= 1
    assert f"eval set bounded: {sampling.scored} of {sampling.eval_tickets}" in _latest_report_markdown()
