"""Alerts: send a summary through a Prefect notification block (Slack, generic webhook, ...).

Delivery failures are raised and logged loudly, never swallowed: a silent alert is worse than none.
"""

from prefect.blocks.core import Block

from retrainer.logs import run_logger
from tasks.common import once_task


def notify(block_name: str, subject: str, body: str) -> None:
    """Send `subject` and `body` through the notification block saved as `block_name`."""
    block = Block.load(block_name)
    try:
        with block.raise_on_failure():
            block.notify(body=body, subject=subject)
    except Exception:
        run_logger().error("notification through block %r FAILED: %s", block_name, subject, exc_info=True)
        raise


notify_task = once_task(notify, "notify")
