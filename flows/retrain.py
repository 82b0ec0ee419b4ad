"""The ``retrain`` flow: ingest -> validate -> curate -> fine-tune -> score both -> gate -> publish.

It only wires tasks; the work lives in ``tasks/``. Settings are read when the flow starts.
"""

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run

from flows.fine_tune import checkpoint_prefix, fine_tune_flow
from retrainer.logs import run_logger
from retrainer.provenance import code_version, library_versions
from retrainer.settings import GatePolicy, RetrainerSettings, TrainingConfig, load_settings
from retrainer.storage import ObjectStore, PreconditionFailedError
from tasks.alerts import alert_validation_failed_task, notify_task
from tasks.checkpoints import discard_scratch_task
from tasks.dataset import (
    EVAL,
    check_splits,
    lineage,
    merge_curated,
    read_curated_task,
    rows_from_sources,
    write_curated_task,
)
from tasks.evaluate import ModelEvaluation, score_model_task
from tasks.gate import Decision, decide_promotion
from tasks.handoff import hand_off_fine_tune_task, warn_if_a_worker_waits_unused
from tasks.ingest import (
    commit_manifest_task,
    discover_new_batches_task,
    load_batches_task,
    manifest_entry,
    read_manifest_task,
    record_batches,
)
from tasks.registry import (
    DecisionRecord,
    ProductionPointer,
    fetch_model_task,
    flip_production_pointer_task,
    last_gate_decision_task,
    new_version_id,
    publish_model_task,
    read_history_task,
    read_production_pointer_task,
    record_decision_task,
)
from tasks.report import (
    ACCURACY_PNG,
    CONFUSION_PNG,
    RetrainOutcome,
    draw_confusion_matrices,
    draw_production_accuracy,
    render_model_card,
    render_outcome_markdown,
    report_outcome_task,
    report_validation_task,
)
from tasks.smoke import smoke_test_task
from tasks.train import training_record
from tasks.validate import (
    ValidatedBatch,
    ValidationFailedError,
    quarantine_batches_task,
    validate_batches_task,
    validation_failure,
)


@dataclass(frozen=True)
class Run:
    """What every step of one retrain run works with."""

    store: ObjectStore
    settings: RetrainerSettings
    outcome: RetrainOutcome
    pointer: ProductionPointer | None = None
    pointer_etag: str | None = None  # what a promotion's compare-and-swap expects


@flow(name="retrain")
def retrain(
    training: TrainingConfig | None = None,
    base_model: str | None = None,
    gate: GatePolicy | None = None,
    force: bool = False,
    force_reason: str | None = None,
) -> RetrainOutcome:
    """Retrain the ticket classifier on newly landed tickets; publish it only if it beats the champion.

    Args:
        training: hyper-parameters for this run (default: the configured training settings).
        base_model: hub id or local folder to fine-tune from (default: the configured base model).
        gate: promotion policy for this run (default: the configured gate settings).
        force: promote the challenger whatever the gate says (the smoke test still applies).
        force_reason: why the promotion is forced; required with `force`, recorded in the history.

    A failing run still fails (alerts and automations depend on it); the exception it raises carries
    the outcome so far, with status "validation-failed" or "failed" (see `failed_outcome`).
    """
    outcome = RetrainOutcome(
        status="no-data",
        run_id=str(flow_run.id or new_version_id()),
        forced_reason=force_reason if force else None,
    )
    try:
        if force and not (force_reason or "").strip():
            raise ValueError("a forced promotion needs a force_reason; it is recorded in the history")
        settings = load_settings(training=training, base_model=base_model, gate=gate)
        return run_retrain(settings, outcome, force)
    except Exception as error:
        _attach_failed_outcome(error, outcome)
        raise


def failed_outcome(error: BaseException) -> RetrainOutcome | None:
    """The outcome a failed `retrain` run attached to the exception it raised (None if it has none)."""
    outcome = getattr(error, _OUTCOME_ATTRIBUTE, None)
    return outcome if isinstance(outcome, RetrainOutcome) else None


def run_retrain(settings: RetrainerSettings, outcome: RetrainOutcome, force: bool) -> RetrainOutcome:
    """The body of the `retrain` flow: every step, filling in `outcome`."""
    store = ObjectStore(settings.s3)
    store.require_bucket()  # production buckets are provisioned: a typo must fail, not create one
    curated, new_sources = ingest_new_batches(store, settings, outcome)
    pointer, pointer_etag = read_production_pointer_task(store)
    outcome.production_version = pointer.version if pointer else None
    if curated is None:
        outcome.reasons.append("no curated data yet: nothing to train on")
        return finish(settings, outcome)
    last = last_gate_decision_task(store)
    if pointer and last and last.dataset_version == outcome.dataset_version and not force:
        outcome.status = "no-new-data"
        outcome.reasons.append(f"dataset {outcome.dataset_version} was already decided on; champion kept")
        return finish(settings, outcome)
    splits = check_splits(curated)
    with tempfile.TemporaryDirectory(prefix="run-", dir=settings.scratch_dir()) as run_dir:
        challenger_dir = train_challenger(store, settings, outcome, Path(run_dir))
        new_rows = rows_from_sources(splits[EVAL], new_sources)
        challenger = score_model_task(challenger_dir, splits[EVAL], settings.training.max_length, new_rows)
        champion = None
        if pointer:
            champion_dir = fetch_model_task(store, pointer.version, settings.model_cache_dir)
            champion = score_model_task(champion_dir, splits[EVAL], settings.training.max_length, new_rows)
        decision = decide_promotion(challenger, champion, settings.gate, outcome.forced_reason)
        _record_scores(outcome, challenger, pointer, champion, decision)
        run = Run(store, settings, outcome, pointer, pointer_etag)
        decide_and_publish(run, curated, challenger_dir, decision)
    discard_decided_scratch(store, settings, outcome, published=decision.promote)
    return finish(settings, outcome)


def challenger_prefix(settings: RetrainerSettings, run_id: str) -> str:
    """Where a run's fine-tune uploads the challenger (scratch, before the gate)."""
    return f"{settings.s3.runs_prefix}{run_id}/challenger/"


def train_challenger(
    store: ObjectStore, settings: RetrainerSettings, outcome: RetrainOutcome, run_dir: Path
) -> Path:
    """Run the fine-tune flow (as a deployment when configured, else in-process) and fetch its model."""
    prefix = challenger_prefix(settings, outcome.run_id)
    parameters = {
        "dataset_version": outcome.dataset_version,
        "output_prefix": prefix,
        "training": settings.training,
        "base_model": settings.base_model,
    }
    if settings.fine_tune_deployment:
        hand_off_fine_tune_task(
            settings.fine_tune_deployment,
            {**parameters, "training": settings.training.model_dump()},
            start_timeout_s=settings.fine_tune_start_timeout_s,
            timeout_s=settings.fine_tune_timeout_s,
        )
    else:
        warn_if_a_worker_waits_unused()
        fine_tune_flow(**parameters)
    store.download_prefix(prefix, run_dir / "challenger")
    return run_dir / "challenger"


def discard_decided_scratch(
    store: ObjectStore, settings: RetrainerSettings, outcome: RetrainOutcome, published: bool
) -> None:
    """Delete what only a rerun of this decided run would need: its checkpoints, and its challenger copy
    once that was published under models/. A rejected challenger stays in runs/ for inspection until the
    bucket's lifecycle rule expires it. A failed delete is a warning, not a failed run: it decided."""
    prefixes = [checkpoint_prefix(settings, outcome.dataset_version)]
    if published:
        prefixes.append(challenger_prefix(settings, outcome.run_id))
    state = discard_scratch_task(store, prefixes, return_state=True)
    if state.is_failed():
        run_logger().warning("run scratch not deleted (the lifecycle rule on runs/ will): %s", state.message)


def ingest_new_batches(
    store: ObjectStore, settings: RetrainerSettings, outcome: RetrainOutcome
) -> tuple[pd.DataFrame | None, set[tuple[str, str]]]:
    """Ingest every new batch (quarantining what is bad); the curated dataset and this run's sources."""
    manifest, manifest_etag = read_manifest_task(store)
    new_objects = discover_new_batches_task(store, manifest)
    loaded = load_batches_task(store, new_objects, settings.ingest)
    curated = read_curated_task(store, manifest.dataset_version)
    validated = validate_batches_task(loaded, settings.validation, settings.ingest.label_aliases, curated)
    quarantine_batches_task(store, outcome.run_id, validated, [batch.raw for batch in loaded])
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
    if validated:
        report_validation_task(outcome.run_id, validated)
    failure = validation_failure(validated)
    if failure:
        alert_validation_failed_task(settings.notification_block, outcome.run_id, validated, failure)
        raise ValidationFailedError(failure)
    return curated, {(result.key, result.etag) for result in validated}


def decide_and_publish(run: Run, curated: pd.DataFrame, challenger_dir: Path, decision: Decision) -> None:
    """Draw the report pictures, then publish + smoke-test + flip when the gate says promote."""
    store, settings, outcome = run.store, run.settings, run.outcome
    pictures = challenger_dir / "reports"
    pictures.mkdir()
    draw_confusion_matrices(outcome, pictures / CONFUSION_PNG)
    draw_production_accuracy(read_history_task(store), outcome, pictures / ACCURACY_PNG)
    outcome.status = "kept"
    if decision.promote:
        metadata = _model_metadata(settings, outcome, curated, challenger_dir)
        (challenger_dir / "README.md").write_text(render_model_card(outcome, metadata))
        publish_model_task(store, challenger_dir, outcome.challenger_version, metadata)
        outcome.report_uris = [
            store.uri(f"{store.settings.models_prefix}{outcome.challenger_version}/reports/{name}")
            for name in (CONFUSION_PNG, ACCURACY_PNG)
        ]
        smoke_and_flip(run, challenger_dir, decision)
    else:
        prefix = f"{store.settings.reports_prefix}{outcome.run_id}/"
        outcome.report_uris = [store.uri(key) for key in store.upload_dir(pictures, prefix)]
    record_decision_task(store, _decision_record(outcome, run.pointer))


def smoke_and_flip(run: Run, challenger_dir: Path, decision: Decision) -> None:
    """Smoke-test the published files, then flip the production pointer to them (compare-and-swap)."""
    store, settings, outcome = run.store, run.settings, run.outcome
    smoke = smoke_test_task(
        store,
        outcome.challenger_version,
        challenger_dir,
        settings.scratch_dir(),
        settings.training.max_length,
        settings.gate.min_canary_accuracy,
    )
    outcome.reasons.extend(smoke.reasons)
    if not smoke.passed:
        outcome.status = "smoke-failed"
        outcome.reasons.append("smoke test failed: not published to production; champion kept")
        return
    new_pointer = ProductionPointer(
        version=outcome.challenger_version,
        accuracy=outcome.challenger_accuracy,
        dataset_version=outcome.dataset_version,
        promoted_at=datetime.now(UTC),
        run_id=outcome.run_id,
        action="forced" if decision.forced else "promoted",
        previous_version=run.pointer.version if run.pointer else None,
    )
    try:
        flip_production_pointer_task(store, new_pointer, run.pointer_etag)
    except PreconditionFailedError:
        report_lost_race(run)
        return
    outcome.status = new_pointer.action
    outcome.production_version = outcome.challenger_version


def report_lost_race(run: Run) -> None:
    """Another run flipped the pointer first: report the version that is in production now."""
    current, _ = read_production_pointer_task(run.store)  # not run.pointer: that one is stale
    run.outcome.status = "lost-race"
    run.outcome.production_version = current.version if current else None
    run.outcome.reasons.append(
        f"another run changed the production pointer first (production is now "
        f"{run.outcome.production_version}); this run changed nothing"
    )


def finish(settings: RetrainerSettings, outcome: RetrainOutcome) -> RetrainOutcome:
    """Publish the report artifact and, when configured, send the summary as a notification."""
    report_outcome_task(outcome)
    if settings.notification_block:
        subject = f"ticket-retrainer: {outcome.status} (run {outcome.run_id})"
        notify_task(settings.notification_block, subject, render_outcome_markdown(outcome))
    return outcome


def _record_scores(
    outcome: RetrainOutcome,
    challenger: ModelEvaluation,
    pointer: ProductionPointer | None,
    champion: ModelEvaluation | None,
    decision: Decision,
) -> None:
    outcome.challenger_version = new_version_id()
    outcome.challenger, outcome.challenger_new_data = challenger.overall, challenger.new_data
    outcome.champion_version = pointer.version if pointer else None
    outcome.champion = champion.overall if champion else None
    outcome.champion_new_data = champion.new_data if champion else None
    outcome.p_value = decision.p_value
    outcome.reasons.extend(decision.reasons)


def _model_metadata(
    settings: RetrainerSettings, outcome: RetrainOutcome, curated: pd.DataFrame, model_dir: Path
) -> dict:
    """What is stored beside the weights as metrics.json (and in the model card): scores, data, recipe,
    and the lexical half as trained (blend weight and temperature, or why it is missing)."""
    return {
        "version": outcome.challenger_version,
        "accuracy": outcome.challenger.accuracy,
        "macro_f1": outcome.challenger.macro_f1,
        "evaluation": outcome.challenger.model_dump(),
        "new_data_evaluation": outcome.challenger_new_data.model_dump()
        if outcome.challenger_new_data
        else None,
        "dataset_version": outcome.dataset_version,
        "base_model": settings.base_model,
        "base_model_revision": settings.base_model_revision,
        "training": settings.training.model_dump(),
        "lexical_half": training_record(model_dir).get("lexical"),
        "gate": settings.gate.model_dump(),
        "lineage": lineage(curated),
        "code_version": code_version(),
        "library_versions": library_versions(),
        "decision": {
            "run_id": outcome.run_id,
            "champion_version": outcome.champion_version,
            "champion_accuracy": outcome.champion_accuracy,
            "p_value": outcome.p_value,
            "forced_reason": outcome.forced_reason,
            "reasons": outcome.reasons,
        },
    }


_OUTCOME_ATTRIBUTE = "retrain_outcome"


def _attach_failed_outcome(error: Exception, outcome: RetrainOutcome) -> None:
    # The exception is what Prefect keeps as the failed state's result, so the caller can read the
    # outcome back from it (`failed_outcome`) while the run still ends Failed.
    message = str(error) or type(error).__name__
    if outcome.status != "no-data":  # it failed after deciding (e.g. the notification): say what it decided
        message = f"the run failed after its decision ({outcome.status}): {message}"
    outcome.status = "validation-failed" if isinstance(error, ValidationFailedError) else "failed"
    outcome.reasons.append(message)
    setattr(error, _OUTCOME_ATTRIBUTE, outcome)  # every exception instance has a __dict__


def _entry(result: ValidatedBatch, run_id: str):
    return manifest_entry(
        rows=result.rows,
        accepted=len(result.accepted),
        etag=result.etag,
        run_id=run_id,
        merged=len(result.merged),
    )


def _count_ingestion(
    outcome: RetrainOutcome, validated: list[ValidatedBatch], dataset_version: str | None
) -> None:
    outcome.batches_ingested = len(validated)
    outcome.rows_accepted = sum(len(result.accepted) for result in validated)
    outcome.rows_merged = sum(len(result.merged) for result in validated)
    outcome.rows_quarantined = sum(
        result.rows - len(result.accepted) - len(result.merged) for result in validated
    )
    outcome.problems = [problem for result in validated for problem in result.problems]
    outcome.dataset_version = dataset_version


def _decision_record(outcome: RetrainOutcome, pointer: ProductionPointer | None) -> DecisionRecord:
    return DecisionRecord(
        run_id=outcome.run_id,
        decided_at=datetime.now(UTC),
        action=outcome.status,
        dataset_version=outcome.dataset_version,
        candidate_version=outcome.challenger_version,
        candidate_accuracy=outcome.challenger_accuracy,
        champion_version=outcome.champion_version,
        champion_accuracy=outcome.champion_accuracy,
        p_value=outcome.p_value,
        forced_reason=outcome.forced_reason,
        production_version=outcome.production_version,
        previous_production=pointer.version if pointer else None,
        reasons=outcome.reasons,
    )
