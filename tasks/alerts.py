"""Alerts: Prefect events for automations, and notifications through a Prefect notification block.

Delivery failures are raised and logged loudly, never swallowed: a silent alert is worse than none.
"""

from prefect.blocks.core import Block
from prefect.events import emit_event

from retrainer.core.agreement import LabelAgreement
from retrainer.core.gate import Decision
from retrainer.core.validation import ValidatedBatch
from tasks.common import once_task, run_logger

VALIDATION_FAILED_EVENT = "retrainer.validation.failed"
LABELS_SUSPECT_EVENT = "retrainer.labels.suspect"
RESOURCE_PREFIX = "ticket-retrainer.batch."
CORRUPT_CHAMPION_EVENT = "retrainer.champion.corrupt"
MODEL_RESOURCE_PREFIX = "ticket-retrainer.model."


def notify(block_name: str, subject: str, body: str) -> None:
    """Send `subject` and `body` through the notification block saved as `block_name` (``type/name``)."""
    block = Block.load(block_name)
    try:
        with block.raise_on_failure():
            block.notify(body=body, subject=subject)
    except Exception:
        run_logger().error("notification through block %r FAILED: %s", block_name, subject, exc_info=True)
        raise


def validation_failed_payload(run_id: str, batch: ValidatedBatch) -> dict:
    """What the ``retrainer.validation.failed`` event carries for one rejected batch: counts and reasons
    without the offending values (events are kept by the Prefect server and sent on by automations)."""
    return {
        "run_id": run_id,
        "batch": batch.key,
        "etag": batch.etag,
        "rows": batch.rows,
        "accepted": len(batch.accepted),
        "quarantined": len(batch.rejected),
        "reasons": batch.batch_errors,
        "row_problems": batch.loggable_problems[len(batch.batch_errors) : len(batch.batch_errors) + 20],
    }


def alert_validation_failed(
    block_name: str | None, run_id: str, batches: list[ValidatedBatch], message: str
) -> None:
    """One event per batch rejected whole (for automations), and one notification when configured."""
    for batch in batches:
        if batch.rejected_whole:
            emit_event(
                event=VALIDATION_FAILED_EVENT,
                resource={
                    "prefect.resource.id": RESOURCE_PREFIX + batch.key,
                    "prefect.resource.name": batch.key,
                },
                payload=validation_failed_payload(run_id, batch),
            )
    run_logger().error(message)
    if block_name:
        notify(block_name, f"ticket-retrainer: validation FAILED (run {run_id})", message)


def alert_labels_suspect(
    block_name: str | None, run_id: str, agreement: LabelAgreement, decision: Decision
) -> None:
    """The label check blocked promotion: one ``retrainer.labels.suspect`` event per batch it names (the
    lowest agreement with the champion first; counts and shares, no ticket text), the reasons logged as
    an error, and one notification when configured."""
    for key in decision.suspect_batches:
        batch = agreement.batches[key]
        emit_event(
            event=LABELS_SUSPECT_EVENT,
            resource={"prefect.resource.id": RESOURCE_PREFIX + key, "prefect.resource.name": key},
            payload={
                "run_id": run_id,
                "batch": key,
                "tickets": batch.tickets,
                "agreement": batch.agreement,
                **agreement.summary(),
            },
        )
    message = "; ".join(
        reason
        for reason in decision.reasons
        if reason.startswith("SUSPECT") or (reason.startswith("label") and "EXCEEDS" in reason)
    )
    state = "promotion FORCED anyway" if decision.forced else "promotion blocked"
    run_logger().error("label check: %s: %s", state, message)
    if block_name:
        notify(block_name, f"ticket-retrainer: SUSPECT LABELS, {state} (run {run_id})", message)


def alert_corrupt_champion(block_name: str | None, run_id: str, version: str, message: str) -> None:
    """A run met a corrupt production version: an event naming it (for automations), the error in the
    run log, and one notification when configured. `message` names the file and the remedy."""
    emit_event(
        event=CORRUPT_CHAMPION_EVENT,
        resource={"prefect.resource.id": MODEL_RESOURCE_PREFIX + version, "prefect.resource.name": version},
        payload={"run_id": run_id, "version": version, "message": message},
    )
    run_logger().error(message)
    if block_name:
        notify(block_name, f"ticket-retrainer: production model {version} is CORRUPT (run {run_id})", message)


notify_task = once_task(notify, "notify")
alert_labels_suspect_task = once_task(alert_labels_suspect, "alert-labels-suspect")
alert_validation_failed_task = once_task(alert_validation_failed, "alert-validation-failed")
alert_corrupt_champion_task = once_task(alert_corrupt_champion, "alert-corrupt-champion")
