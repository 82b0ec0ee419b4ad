"""The ``retrain`` flow: ingest -> validate -> curate -> fine-tune -> score both -> gate -> publish.

It only wires tasks; the work lives in ``tasks/`` and ``retrainer/``. Each step returns what it found,
and the flow assembles one `RunRecord` from those values (`retrainer.records`): the history entry,
the production pointer and the published metadata are derived from that record.
"""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.fine_tune import dataset_checkpoints_prefix, fine_tune_flow
from retrainer.core.agreement import LabelAgreement
from retrainer.core.batch_files import LoadedBatch
from retrainer.core.eval_sample import bounded_eval
from retrainer.core.gate import decide_promotion
from retrainer.core.training import training_record
from retrainer.core.training_plan import TrainingPlan, TrainingRecipe, plan_training, unseen_mask
from retrainer.core.validation import ValidatedBatch, ValidationFailedError, validation_failure
from retrainer.records import RunRecord
from retrainer.report.markdown import render_run_markdown
from retrainer.report.model_card import published_metadata, render_model_card
from retrainer.report.pictures import (
    ACCURACY_PNG,
    CONFUSION_PNG,
    draw_confusion_matrices,
    draw_production_accuracy,
)
from retrainer.resources import Resources
from retrainer.run_steps import Ingestion, Production, Publication, RunProgress, Scores
from retrainer.settings import GatePolicy, TrainingConfig
from retrainer.storage import PreconditionFailedError
from tasks.alerts import (
    alert_corrupt_champion_task,
    alert_labels_suspect_task,
    alert_validation_failed_task,
    notify_task,
)
from tasks.checkpoints import discard_scratch_task
from tasks.common import run_logger
from tasks.dataset import (
    EVAL,
    TRAIN,
    check_splits,
    discard_uncommitted_task,
    latest_rows,
    lineage,
    mark_superseded_task,
    read_curated_task,
    rows_from_sources,
    with_splits,
    write_curated_task,
)
from tasks.erasure import erased_ticket_ids_task, withhold_erased
from tasks.evaluate import ScoredModel, champion_label_agreement_task, score_on_eval_task
from tasks.handoff import hand_off_fine_tune_task, warn_if_a_worker_waits_unused
from tasks.id_index import index_batches_task
from tasks.ingest import discover_new_batches_task, load_batches_task
from tasks.known_predictions import (
    prune_predictions_task,
    read_known_predictions_task,
    read_predictions_at_task,
    record_predictions_task,
)
from tasks.manifest import (
    commit_manifest_task,
    manifest_entry,
    manifest_key,
    read_manifest_task,
    record_batches,
)
from tasks.registry import (
    CorruptVersionError,
    champion_lineage,
    fetch_model_task,
    flip_production_pointer_task,
    last_gate_decision_task,
    new_version_id,
    publish_model_task,
    read_history_task,
    read_production_pointer_task,
    record_decision_task,
    trained_on,
)
from tasks.report import report_run_task, report_validation_task
from tasks.smoke import smoke_test_task
from tasks.validate import quarantine_batches_task, validate_batches_task


@flow(name="retrain")
def retrain(
    training: TrainingConfig | None = None,
    base_model: str | None = None,
    gate: GatePolicy | None = None,
    force: bool = False,
    force_reason: str | None = None,
    full_retrain: bool = False,
    base_model_revision: str | None = None,
    resources: Resources | None = None,
) -> RunRecord:
    """Retrain the ticket classifier on newly landed tickets; publish it only if it beats the champion.

    Args:
        training: hyper-parameters for this run (default: the configured training settings).
        base_model: hub id or local folder to fine-tune from (default: the configured base model).
        base_model_revision: its hub revision (default: the configured one for the configured base
            model, ``main`` for another).
        gate: promotion policy for this run (default: the configured gate settings).
        force: promote the challenger whatever the gate says (the smoke test still applies).
        force_reason: why the promotion is forced; required with `force`, recorded in the history.
        full_retrain: fine-tune the base model on every curated ticket even where the incremental
            policy would warm-start from the champion; also retrains a dataset already decided on.
        resources: settings and store, passed by in-process callers (the demo, tests, notebooks); empty
            (a deployment run, `retrainer run`): read from the environment when the run starts.

    A failing run still fails (alerts and automations depend on it); the exception it raises carries
    the record so far, with status "validation-failed" or "failed" (see `failed_record`).
    """
    progress = RunProgress(str(flow_run.id or new_version_id()), force_reason if force else None)
    try:
        if force and not (force_reason or "").strip():
            raise ValueError("a forced promotion needs a force_reason; it is recorded in the history")
        overrides = {
            "training": training,
            "base_model": base_model,
            "base_model_revision": base_model_revision,
            "gate": gate,
        }
        resources = (resources or Resources.from_environment()).with_overrides(**overrides)
        progress.final = run_retrain(resources, progress, force, full_retrain)
        return finish(resources, progress.final)
    except Exception as error:
        _attach_failed_record(error, progress)
        raise


def failed_record(error: BaseException) -> RunRecord | None:
    """The record a failed `retrain` run attached to the exception it raised (None if it has none)."""
    record = getattr(error, _RECORD_ATTRIBUTE, None)
    return record if isinstance(record, RunRecord) else None


def run_retrain(
    resources: Resources, progress: RunProgress, force: bool, full_retrain: bool = False
) -> RunRecord:
    """The body of the `retrain` flow, as the loop diagram: every step, in order."""
    store = resources.store
    store.require_bucket()  # production buckets are provisioned: a typo must fail, not create one
    ingestion = progress.ingestion = ingest_new_batches(resources, progress.run_id)
    report_validation(resources, progress.run_id, ingestion.validated)
    production = progress.production = Production(*read_production_pointer_task(store))
    if ingestion.curated is None:
        return progress.record("no-data", ["no curated data yet: nothing to train on"])
    last = last_gate_decision_task(store)
    decided = last and last.dataset_version == ingestion.dataset_version
    if production.pointer and decided and not (force or full_retrain):
        version = ingestion.dataset_version
        return progress.record("no-new-data", [f"dataset {version} was already decided on; champion kept"])
    splits = check_splits(ingestion.curated)
    progress.plan = plan_challenger_training(
        resources, splits[TRAIN], production, full_retrain, progress.run_id
    )
    recipe = TrainingRecipe.for_run(resources.settings, progress.plan)  # the one place it is decided
    with tempfile.TemporaryDirectory(prefix="run-", dir=resources.settings.scratch_dir()) as run_dir:
        challenger_dir = train_challenger(
            resources, progress.run_id, ingestion.dataset_version, Path(run_dir), recipe
        )
        progress.scores = score_both(resources, challenger_dir, splits[EVAL], ingestion, production, progress)
        gated = progress.record("kept")
        progress.publication = publish_or_keep(resources, gated, challenger_dir, ingestion.curated, progress)
    decided = progress.record(progress.publication.status)
    record_decision_task(store, decided.decision_record(datetime.now(UTC)))
    discard_decided_scratch(resources, decided, published=progress.scores.decision.promote)
    return decided


def ingest_new_batches(resources: Resources, run_id: str) -> Ingestion:
    """Ingest every new batch (quarantining what is bad) into a new curated dataset version."""
    store, settings = resources.store, resources.settings
    manifest, manifest_etag = read_manifest_task(store)
    loaded = load_batches_task(store, discover_new_batches_task(store, manifest), settings.ingest)
    index_batches_task(store, loaded)  # which ids each batch holds: an erasure reads only those holding one
    loaded = withhold_erased_tickets(resources, loaded)
    curated = read_curated_task(store, manifest.dataset_version)
    validated = validate_batches_task(loaded, settings.validation, settings.ingest.label_aliases, curated)
    quarantined = quarantine_batches_task(store, run_id, validated, [batch.raw for batch in loaded])
    dataset_version = manifest.dataset_version
    accepted = [result.accepted for result in validated if not result.accepted.empty]
    if accepted:
        new_rows = pd.concat(accepted, ignore_index=True)
        new_rows = with_splits(curated, new_rows, settings.eval_fraction, settings.validation_fraction)
        curated = latest_rows([curated, new_rows])
        dataset_version = write_curated_task(store, new_rows, manifest.dataset_version)  # only new rows
    if validated:
        entries = {result.key: _manifest_entry(result, run_id) for result in validated}
        try:
            commit_manifest_task(store, record_batches(manifest, entries, dataset_version), manifest_etag)
        except PreconditionFailedError as error:
            written = dataset_version if dataset_version != manifest.dataset_version else None
            raise discard_lost_ingestion(resources, written, quarantined) from error
    if manifest.dataset_version and dataset_version != manifest.dataset_version:
        tag_superseded(resources, manifest.dataset_version)
    return Ingestion(curated, dataset_version, validated)


def discard_lost_ingestion(
    resources: Resources, written: str | None, quarantined: list[str]
) -> PreconditionFailedError:
    """The manifest changed since this run read it (another run, or an erasure request, committed
    first): delete the dataset version and quarantine objects it wrote, which no manifest will name
    and which may hold a ticket erased meanwhile (`tasks.erasure`); the error to fail the run with."""
    store = resources.store
    current, _ = read_manifest_task(store)
    state = discard_uncommitted_task(store, written, current.dataset_version, quarantined, return_state=True)
    if state.is_failed():
        run_logger().warning("what this run wrote was not all deleted: %s", state.message)
    return PreconditionFailedError(
        f"the manifest {store.uri(manifest_key(store))} changed while this run ingested (another run "
        f"or an erasure request committed first): its dataset version {written or '(none)'} and "
        "quarantine writes were discarded; the next run ingests these batches"
    )


def withhold_erased_tickets(resources: Resources, loaded: list[LoadedBatch]) -> list[LoadedBatch]:
    """The batches without the records of tickets erased on request (a producer sent them again): they
    are neither curated nor quarantined, but counted and logged (batch keys and counts, never text)."""
    if not loaded:
        return loaded
    erased = erased_ticket_ids_task(resources.store)
    kept = withhold_erased(loaded, erased, resources.settings.ingest)
    for batch in kept:
        if batch.erased:
            run_logger().warning(
                "%s: %d record(s) of erased tickets withheld: neither curated nor quarantined",
                batch.key,
                batch.erased,
            )
    return kept


def tag_superseded(resources: Resources, dataset_version: str) -> None:
    """Tag the curated version this run replaced, so the retention rule expires it (`retrainer.retention`).
    A failure is a warning: the run has its data; the version is merely kept longer."""
    state = mark_superseded_task(resources.store, dataset_version, return_state=True)
    if state.is_failed():
        run_logger().warning(
            "dataset %s not tagged superseded (the retention rule will not expire it): %s",
            dataset_version,
            state.message,
        )


def report_validation(resources: Resources, run_id: str, validated: list[ValidatedBatch]) -> None:
    """Attach the validation report; alert and fail the run when a batch was rejected (quarantined)."""
    if validated:
        report_validation_task(run_id, validated, resources.settings.report_text_previews)
    failure = validation_failure(validated)
    if failure:
        alert_validation_failed_task(resources.settings.notification_block, run_id, validated, failure)
        raise ValidationFailedError(failure)


def challenger_prefix(resources: Resources, run_id: str) -> str:
    """Where a run's fine-tune uploads the challenger (scratch, before the gate)."""
    return f"{resources.settings.s3.runs_prefix}{run_id}/challenger/"


def challenger_predictions_key(resources: Resources, run_id: str) -> str:
    """Where a fine-tune on the gpu pool stores the challenger's eval predictions (scratch)."""
    return f"{resources.settings.s3.runs_prefix}{run_id}/challenger-eval-predictions.parquet"


def plan_challenger_training(
    resources: Resources, train_rows: pd.DataFrame, production: Production, full_requested: bool, run_id: str
) -> TrainingPlan:
    """Full or incremental training (`retrainer.core.training_plan`), from what the champion was trained
    on; logged, and kept in the run record and the published metadata."""
    settings, champion, unseen = resources.settings, None, len(train_rows)
    if production.pointer:
        champion_dir = fetch_champion(resources, production, run_id)
        champion = champion_lineage(champion_dir, production.version)
        unseen = int(unseen_mask(train_rows, trained_on(champion_dir)).sum())
    base_model = (settings.base_model, settings.base_model_revision)
    plan = plan_training(settings.incremental, champion, base_model, unseen, len(train_rows), full_requested)
    run_logger().info("training plan: %s", plan.summary())
    return plan


def fetch_champion(resources: Resources, production: Production, run_id: str) -> Path:
    """The production model's verified local copy. A corrupt champion fails the run with an alert naming
    it and the remedy: a run never trains from, compares with, or promotes over a model it cannot trust."""
    try:
        return fetch_model_task(resources.store, production.version, resources.settings.model_cache_dir)
    except CorruptVersionError as error:
        alert_corrupt_champion_task(resources.settings.notification_block, run_id, error.version, str(error))
        raise


def train_challenger(
    resources: Resources, run_id: str, dataset_version: str, run_dir: Path, recipe: TrainingRecipe
) -> Path:
    """Run the fine-tune flow (as a deployment when configured, else in-process) on `recipe`, keeping its
    checkpoints where `discard_decided_scratch` deletes them, and fetch its model."""
    settings = resources.settings
    prefix = challenger_prefix(resources, run_id)
    parameters = {
        "dataset_version": dataset_version,
        "output_prefix": prefix,
        "recipe": recipe,
        "checkpoints_prefix": dataset_checkpoints_prefix(settings, dataset_version),
    }
    if settings.fine_tune_deployment:  # scored there too: the challenger's eval predictions come back
        hand_off_fine_tune_task(
            settings.fine_tune_deployment,
            {
                **parameters,
                "recipe": recipe.model_dump(mode="json"),
                "eval_predictions_key": challenger_predictions_key(resources, run_id),
            },
            start_timeout_s=settings.fine_tune_start_timeout_s,
            timeout_s=settings.fine_tune_timeout_s,
        )
    else:
        warn_if_a_worker_waits_unused()
        fine_tune_flow(**parameters, resources=resources)
    resources.store.download_prefix(prefix, run_dir / "challenger")
    return run_dir / "challenger"


def score_both(
    resources: Resources,
    challenger_dir: Path,
    eval_rows: pd.DataFrame,
    ingestion: Ingestion,
    production: Production,
    progress: RunProgress,
) -> Scores:
    """Score the challenger and the champion on the same eval rows (all of them, those of this run, and
    the established ones: from batches the champion was trained on), measure the champion's agreement
    with the labels new to it, and apply the gate; alert when the labels look poisoned."""
    settings, max_length = resources.settings, resources.settings.training.max_length
    eval_rows, new_rows, sampling = bounded_eval(
        eval_rows,
        rows_from_sources(eval_rows, ingestion.sources),
        settings.gate.max_eval_tickets,
    )
    champion_dir, seen = None, set()
    if production.pointer:
        champion_dir = fetch_champion(resources, production, progress.run_id)
        seen = trained_on(champion_dir)
    established = rows_from_sources(eval_rows, seen)
    scored_where_trained = (
        read_predictions_at_task(resources.store, challenger_predictions_key(resources, progress.run_id))
        if settings.fine_tune_deployment
        else None
    )
    # quote(): Prefect would otherwise visit every item of these per-ticket collections (minutes at 1M)
    challenger = score_on_eval_task(
        challenger_dir,
        eval_rows,
        max_length,
        quote(new_rows),
        quote(established),
        quote(scored_where_trained),
    )
    champion = agreement = None
    if champion_dir:
        champion, agreement = score_champion(
            resources,
            champion_dir,
            production,
            progress.run_id,
            eval_rows,
            ingestion.curated,
            seen,
            new_rows,
            established,
        )
    decision = decide_promotion(
        challenger.evaluation,
        champion.evaluation if champion else None,
        settings.gate,
        progress.forced_reason,
        agreement,
    )
    if decision.label_alarm:
        alert_labels_suspect_task(settings.notification_block, progress.run_id, agreement, decision)
    return Scores(new_version_id(), challenger, champion, decision, agreement, sampling)


def score_champion(
    resources: Resources,
    champion_dir: Path,
    production: Production,
    run_id: str,
    eval_rows: pd.DataFrame,
    curated: pd.DataFrame,
    seen: set[tuple[str, str]],
    new_rows: list[bool],
    established: list[bool],
) -> tuple[ScoredModel, LabelAgreement]:
    """Score the champion on the eval rows and measure its agreement with the labels new to it, reusing
    the predictions its version made in earlier runs (`gate.reuse_champion_predictions`); store the ones
    computed now for the next run."""
    store, settings = resources.store, resources.settings
    max_length, reuse = settings.training.max_length, settings.gate.reuse_champion_predictions
    known = read_known_predictions_task(store, production.version) if reuse else None
    champion = score_on_eval_task(
        champion_dir, eval_rows, max_length, quote(new_rows), quote(established), quote(known)
    )
    checked = champion_label_agreement_task(
        champion_dir, quote(champion.evaluation), eval_rows, curated, seen, max_length, quote(known)
    )
    if reuse:
        computed = pd.concat([champion.new_predictions, checked.new_predictions], ignore_index=True)
        record_predictions_task(store, production.version, run_id, computed)
    return champion, checked.agreement


def publish_or_keep(
    resources: Resources, gated: RunRecord, challenger_dir: Path, curated: pd.DataFrame, progress: RunProgress
) -> Publication:
    """Draw the report pictures; then publish, smoke-test and flip when the gate says promote."""
    store = resources.store
    pictures = draw_report_pictures(store, gated, challenger_dir / "reports")
    decision = progress.scores.decision
    if not decision.promote:
        uploaded = store.upload_dir(pictures, f"{store.settings.reports_prefix}{gated.run_id}/")
        return Publication("kept", progress.production.version, report_uris=[store.uri(k) for k in uploaded])
    lexical_half = training_record(challenger_dir).get("lexical")
    metadata = published_metadata(gated, resources.settings, lineage(curated), lexical_half)
    (challenger_dir / "README.md").write_text(render_model_card(gated, metadata))
    publish_model_task(store, challenger_dir, gated.challenger_version, metadata)
    if resources.settings.gate.reuse_champion_predictions:  # the next run's champion has scored these
        record_predictions_task(
            store, gated.challenger_version, gated.run_id, progress.scores.challenger.new_predictions
        )
    folder = f"{store.settings.models_prefix}{gated.challenger_version}/reports/"
    uris = [store.uri(folder + name) for name in (CONFUSION_PNG, ACCURACY_PNG)]
    return smoke_and_flip(resources, gated, challenger_dir, progress.production, uris)


def draw_report_pictures(store, gated: RunRecord, folder: Path) -> Path:
    """The confusion matrices and the production accuracy across versions, as PNGs in `folder`."""
    folder.mkdir()
    draw_confusion_matrices(gated, folder / CONFUSION_PNG)
    draw_production_accuracy(read_history_task(store), gated, folder / ACCURACY_PNG)
    return folder


def smoke_and_flip(
    resources: Resources, gated: RunRecord, challenger_dir: Path, production: Production, uris: list[str]
) -> Publication:
    """Smoke-test the published files, then flip the production pointer to them (compare-and-swap)."""
    store, settings = resources.store, resources.settings
    smoke = smoke_test_task(
        store,
        gated.challenger_version,
        challenger_dir,
        settings.scratch_dir(),
        settings.training.max_length,
        settings.gate.min_canary_accuracy,
    )
    if not smoke.passed:
        failed = "smoke test failed: not published to production; champion kept"
        return Publication("smoke-failed", production.version, [*smoke.reasons, failed], uris)
    action = "forced" if gated.forced_reason else "promoted"
    try:
        flip_production_pointer_task(
            store, gated.production_pointer(datetime.now(UTC), action), production.etag
        )
    except PreconditionFailedError:
        current, _ = read_production_pointer_task(store)  # not production.pointer: that one is stale
        now = current.version if current else None
        lost = (
            f"another run changed the production pointer first (production is now {now}); "
            "this run changed nothing"
        )
        return Publication("lost-race", now, [*smoke.reasons, lost], uris)
    pruned = prune_predictions_task(store, [gated.challenger_version, production.version], return_state=True)
    if pruned.is_failed():  # published: only more parts than needed are left, for the next publication
        run_logger().warning("older versions' stored predictions not deleted: %s", pruned.message)
    return Publication(action, gated.challenger_version, smoke.reasons, uris)


def discard_decided_scratch(resources: Resources, decided: RunRecord, published: bool) -> None:
    """Delete what only a rerun of this decided run would need: its checkpoints, and its challenger copy
    once that was published under models/. A rejected challenger stays in runs/ for inspection until the
    bucket's lifecycle rule expires it. A failed delete is a warning, not a failed run: it decided."""
    prefixes = [
        dataset_checkpoints_prefix(resources.settings, decided.dataset_version),
        challenger_predictions_key(resources, decided.run_id),  # read by the gate: not needed any more
    ]
    if published:
        prefixes.append(challenger_prefix(resources, decided.run_id))
    state = discard_scratch_task(resources.store, prefixes, return_state=True)
    if state.is_failed():
        run_logger().warning("run scratch not deleted (the lifecycle rule on runs/ will): %s", state.message)


def finish(resources: Resources, record: RunRecord) -> RunRecord:
    """Publish the report artifact and, when configured, send the summary as a notification."""
    report_run_task(record)
    block = resources.settings.notification_block
    if block:
        notify_task(
            block, f"ticket-retrainer: {record.status} (run {record.run_id})", render_run_markdown(record)
        )
    return record


_RECORD_ATTRIBUTE = "retrain_record"


def _attach_failed_record(error: Exception, progress: RunProgress) -> None:
    # The exception is what Prefect keeps as the failed state's result, so the caller can read the
    # record back from it (`failed_record`) while the run still ends Failed.
    message = str(error) or type(error).__name__
    status = "validation-failed" if isinstance(error, ValidationFailedError) else "failed"
    final = progress.final
    if final is None:
        record = progress.record(status, [message])
    else:  # it failed after it ended (e.g. the notification): keep what it found, and say what it decided
        if final.status != "no-data":  # no data: nothing was decided
            message = f"the run failed after its decision ({final.status}): {message}"
        record = final.model_copy(update={"status": status, "reasons": [*final.reasons, message]})
    setattr(error, _RECORD_ATTRIBUTE, record)  # every exception instance has a __dict__


def _manifest_entry(result: ValidatedBatch, run_id: str):
    return manifest_entry(
        rows=result.rows,
        accepted=len(result.accepted),
        etag=result.etag,
        run_id=run_id,
        merged=len(result.merged),
        erased=result.erased,
    )
