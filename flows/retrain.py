"""The ``retrain`` flow: ingest -> validate -> curate -> fine-tune -> score both -> gate -> publish.

It only wires tasks; the work lives in ``tasks/``. Settings are read when the flow starts.
"""

import tempfile
from pathlib import Path

import pandas as pd
from prefect import flow, unmapped
from prefect.runtime import flow_run

from retrainer.settings import RetrainerSettings, TrainingConfig, load_settings
from retrainer.storage import ObjectStore, PreconditionFailedError
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    check_splits,
    merge_curated,
    read_curated_task,
    write_curated_task,
)
from tasks.evaluate import ModelScore, score_model_task
from tasks.gate import decide_promotion
from tasks.ingest import (
    commit_manifest_task,
    discover_new_batches_task,
    load_batch_task,
    manifest_entry,
    read_manifest_task,
    record_batches,
)
from tasks.registry import (
    DecisionRecord,
    ProductionPointer,
    fetch_model_task,
    flip_production_pointer_task,
    last_decision_task,
    new_version_id,
    publish_model_task,
    read_production_pointer_task,
    record_decision_task,
)
from tasks.report import RetrainOutcome, report_outcome_task
from tasks.train import fine_tune_task
from tasks.validate import ValidatedBatch, quarantine_batch_task, validate_batch_task


@flow(name="retrain")
def retrain(training: TrainingConfig | None = None, base_model: str | None = None) -> RetrainOutcome:
    """Retrain the ticket classifier on newly landed tickets; publish it only if it beats the champion.

    Args:
        training: hyper-parameters for this run (defaults: the configured training settings).
        base_model: hub id or local folder to fine-tune from (default: the configured base model).
    """
    settings = load_settings(training=training, base_model=base_model)
    store = ObjectStore(settings.s3)
    store.ensure_bucket()
    outcome = RetrainOutcome(status="no-data", run_id=str(flow_run.id or new_version_id()))
    curated = ingest_new_batches(store, settings, outcome)
    pointer, pointer_etag = read_production_pointer_task(store)
    outcome.production_version = pointer.version if pointer else None
    if curated is None:
        outcome.reasons.append("no curated data yet: nothing to train on")
        return report_outcome_task(outcome)
    last = last_decision_task(store)
    if pointer and last and last.dataset_version == outcome.dataset_version:
        outcome.status = "no-new-data"
        outcome.reasons.append(f"dataset {outcome.dataset_version} was already decided on; champion kept")
        return report_outcome_task(outcome)
    splits = check_splits(curated)
    with tempfile.TemporaryDirectory(prefix="run-", dir=_scratch(settings)) as run_dir:
        challenger_dir = fine_tune_task(
            splits[TRAIN],
            splits[VALIDATION],
            settings.base_model,
            settings.base_model_revision,
            settings.training,
            Path(run_dir),
        )
        decide_and_publish(store, settings, splits[EVAL], challenger_dir, pointer, pointer_etag, outcome)
    return report_outcome_task(outcome)


def ingest_new_batches(
    store: ObjectStore, settings: RetrainerSettings, outcome: RetrainOutcome
) -> pd.DataFrame | None:
    """Ingest every new batch (quarantining what is bad) and return the curated dataset."""
    manifest, manifest_etag = read_manifest_task(store)
    new_objects = discover_new_batches_task(store, manifest)
    loaded = load_batch_task.map(store=unmapped(store), info=new_objects).result()
    validated = [validate_batch_task(batch) for batch in loaded]
    for batch, result in zip(loaded, validated, strict=True):
        quarantine_batch_task(store, outcome.run_id, result, batch.raw)
    curated = read_curated_task(store, manifest.dataset_version)
    dataset_version = manifest.dataset_version
    accepted = [result.accepted for result in validated if not result.accepted.empty]
    if accepted:
        curated = merge_curated(
            curated,
            pd.concat(accepted, ignore_index=True),
            settings.eval_fraction,
            settings.validation_fraction,
        )
        dataset_version = write_curated_task(store, curated)
    if validated:
        entries = {result.key: _entry(result, outcome.run_id) for result in validated}
        commit_manifest_task(store, record_batches(manifest, entries, dataset_version), manifest_etag)
    _count_ingestion(outcome, validated, dataset_version)
    return curated


def decide_and_publish(
    store: ObjectStore,
    settings: RetrainerSettings,
    eval_rows: pd.DataFrame,
    challenger_dir: Path,
    pointer: ProductionPointer | None,
    pointer_etag: str | None,
    outcome: RetrainOutcome,
) -> None:
    """Score challenger and champion on the same eval split, apply the gate, publish the winner."""
    max_length = settings.training.max_length
    challenger = score_model_task(challenger_dir, eval_rows, max_length)
    champion = None
    if pointer:
        champion_dir = fetch_model_task(store, pointer.version, _scratch(settings) / "models")
        champion = score_model_task(champion_dir, eval_rows, max_length)
    decision = decide_promotion(challenger.accuracy, champion.accuracy if champion else None)
    _record_scores(outcome, new_version_id(), challenger, pointer, champion)
    outcome.reasons.extend(decision.reasons)
    outcome.status = "kept"
    if decision.promote:
        publish_and_flip(store, _model_metadata(settings, outcome), challenger_dir, pointer_etag, outcome)
    record_decision_task(store, _decision_record(outcome))


def publish_and_flip(
    store: ObjectStore,
    metadata: dict,
    challenger_dir: Path,
    pointer_etag: str | None,
    outcome: RetrainOutcome,
) -> None:
    """Upload the challenger as a new version, then flip the production pointer to it (CAS)."""
    publish_model_task(store, challenger_dir, outcome.challenger_version, metadata)
    new_pointer = ProductionPointer(
        version=outcome.challenger_version,
        accuracy=outcome.challenger_accuracy,
        dataset_version=outcome.dataset_version,
        promoted_at=pd.Timestamp.now(tz="UTC").to_pydatetime(),
        run_id=outcome.run_id,
    )
    try:
        flip_production_pointer_task(store, new_pointer, pointer_etag)
    except PreconditionFailedError:
        outcome.status = "lost-race"
        outcome.reasons.append(
            "another run changed the production pointer first; it was left as that run set it"
        )
        return
    outcome.status = "promoted"
    outcome.production_version = outcome.challenger_version


def _model_metadata(settings: RetrainerSettings, outcome: RetrainOutcome) -> dict:
    """What is stored beside the weights as metrics.json: scores, data and recipe."""
    return {
        "outcome": outcome.model_dump(mode="json", exclude={"problems"}),
        "base_model": settings.base_model,
        "base_model_revision": settings.base_model_revision,
        "training": settings.training.model_dump(),
    }


def _entry(result: ValidatedBatch, run_id: str):
    return manifest_entry(rows=result.rows, accepted=len(result.accepted), etag=result.etag, run_id=run_id)


def _count_ingestion(
    outcome: RetrainOutcome, validated: list[ValidatedBatch], dataset_version: str | None
) -> None:
    outcome.batches_ingested = len(validated)
    outcome.rows_accepted = sum(len(result.accepted) for result in validated)
    outcome.rows_quarantined = sum(result.rows - len(result.accepted) for result in validated)
    outcome.problems = [problem for result in validated for problem in result.problems]
    outcome.dataset_version = dataset_version


def _record_scores(
    outcome: RetrainOutcome,
    version: str,
    challenger: ModelScore,
    pointer: ProductionPointer | None,
    champion: ModelScore | None,
) -> None:
    outcome.challenger_version = version
    outcome.challenger_accuracy = challenger.accuracy
    outcome.eval_examples = challenger.examples
    outcome.champion_version = pointer.version if pointer else None
    outcome.champion_accuracy = champion.accuracy if champion else None


def _decision_record(outcome: RetrainOutcome) -> DecisionRecord:
    return DecisionRecord(
        run_id=outcome.run_id,
        decided_at=pd.Timestamp.now(tz="UTC").to_pydatetime(),
        dataset_version=outcome.dataset_version,
        challenger_version=outcome.challenger_version,
        challenger_accuracy=outcome.challenger_accuracy,
        champion_version=outcome.champion_version,
        champion_accuracy=outcome.champion_accuracy,
        promoted=outcome.status == "promoted",
        reasons=outcome.reasons,
    )


def _scratch(settings: RetrainerSettings) -> Path:
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return settings.work_dir
