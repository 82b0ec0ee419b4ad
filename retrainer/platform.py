"""One idempotent command that prepares a Prefect server: work pools, a notification block, automations;
and, only when asked (``retrainer setup --create-bucket``), the S3 bucket, which needs no Prefect server.

The notification block is made from a webhook URL in the environment (it is a secret, so it is never
a command-line argument): ``RETRAINER_SLACK_WEBHOOK_URL`` makes a Slack block,
``RETRAINER_ALERT_WEBHOOK_URL`` a generic JSON webhook block. Both are saved as ``ALERTS_BLOCK``.
"""

import asyncio
import os

from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from retrainer.automations import apply_automations
from retrainer.settings import S3Settings
from retrainer.storage import ObjectStore

WORK_POOLS = {"cpu": "CPU work: the nightly retrain flow", "gpu": "GPU work: fine-tuning"}
ALERTS_BLOCK = "ticket-retrainer-alerts"


async def _ensure_work_pools() -> list[str]:
    created = []
    async with get_client() as client:
        for name, description in WORK_POOLS.items():
            try:
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", description=description)
                )
                created.append(name)
            except ObjectAlreadyExists:
                pass  # an existing pool keeps its settings (e.g. a Kubernetes gpu pool from infra/k8s)
    return created


def save_alerts_block() -> str | None:
    """Save the notification block described by the environment; its ``type/name``, or None."""
    slack_url = os.environ.get("RETRAINER_SLACK_WEBHOOK_URL")
    webhook_url = os.environ.get("RETRAINER_ALERT_WEBHOOK_URL")
    if slack_url:
        SlackWebhook(url=slack_url).save(ALERTS_BLOCK, overwrite=True)
        return f"slack-webhook/{ALERTS_BLOCK}"
    if webhook_url:
        block = CustomWebhookNotificationBlock(
            name="ticket-retrainer",
            url=webhook_url,
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
            allow_private_urls=os.environ.get("RETRAINER_ALERT_WEBHOOK_PRIVATE", "") == "1",
        )
        block.save(ALERTS_BLOCK, overwrite=True)
        return f"custom-webhook/{ALERTS_BLOCK}"
    return None


def create_bucket(settings: S3Settings) -> str:
    """Create the configured bucket if it does not exist (idempotent); what was done, for the user.

    Runs never create their bucket (a typo must fail, not start an empty registry), so this is the
    one place, besides the demo and the tests, that does.
    """
    store = ObjectStore(settings)
    created = store.ensure_bucket()
    return f"{'created' if created else 'found'} bucket {store.bucket!r} at {store.endpoint}"


def set_up(block_name: str | None) -> list[str]:
    """Create the missing work pools, the alerts block (from the environment) and the automations."""
    actions = [f"created work pool {name!r}" for name in asyncio.run(_ensure_work_pools())]
    saved = save_alerts_block()
    if saved:
        actions.append(f"saved notification block {saved!r}")
        block_name = block_name or saved
    if block_name:
        actions += [f"applied automation {name!r}" for name in apply_automations(block_name)]
    return actions or ["nothing to do: work pools exist"]
