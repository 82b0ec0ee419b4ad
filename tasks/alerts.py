"""Alerts: Prefect events for automations, and notifications through a Prefect notification block.

Delivery failures are raised and logged loudly, never swallowed: a silent alert is worse than none.
"""

from prefect.blocks.core import Block
from prefect.events import emit_event

from retrainer.core.validation import ValidatedBatch
from retrainer.logs import run_logger
from tasks.common import once_task

VALIDATION_FAILED_EVENT = "retrainer.validation.failed"
RESOURCE_PREFIX = "ticket-retrainer.batch."


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


notify_task = once_task(notify, "notify")
alert_validation_failed_task = once_task(alert_validation_failed, "alert-validation-failed")
