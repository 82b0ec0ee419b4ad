"""One idempotent command that prepares a Prefect server: work pools, a notification block, automations;
and, only when asked, the S3 bucket (``retrainer setup --create-bucket``; ``--bucket-only`` creates it alone,
without a Prefect server).

The notification block is made from a webhook URL in the environment (it is a secret, so it is never
a command-line argument, nor printed): ``RETRAINER_SLACK_WEBHOOK_URL`` makes a Slack block,
``RETRAINER_ALERT_WEBHOOK_URL`` a generic JSON webhook block. Both are saved as ``ALERTS_BLOCK``.

Everything is checked before anything is changed: a Prefect server must be configured and accept the
credentials, and a generic webhook must pass Prefect's own private-address check (the server applies
it when it sends) unless ``RETRAINER_ALERT_WEBHOOK_PRIVATE=1`` allows private addresses.
"""

import asyncio
import os

import httpx
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import get_current_settings
from prefect.utilities.urls import validate_restricted_url

from app.automations import apply_automations
from retrainer.retention import retention_rules
from retrainer.settings import S3Settings
from retrainer.storage import LifecycleUnsupportedError, ObjectStore, open_store

WORK_POOLS = {"cpu": "CPU work: the nightly retrain flow", "gpu": "GPU work: fine-tuning"}
ALERTS_BLOCK = "ticket-retrainer-alerts"
PRIVATE_WEBHOOK_SWITCH = "RETRAINER_ALERT_WEBHOOK_PRIVATE"
PREFECT_SERVER_VARIABLES = (
    "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) and, for a server with basic auth, "
    "PREFECT_API_AUTH_STRING (user:password)"
)


class SetupRefusedError(Exception):
    """Setup was refused before it changed anything (exit 2); the message says what to set."""


class PrefectServerError(Exception):
    """The Prefect server could not be reached or refused the credentials (exit 1)."""


def require_prefect_server(command: str, hint: str = "") -> str:
    """The configured Prefect API URL, once one request to it has been answered with the credentials.

    Without ``PREFECT_API_URL`` Prefect would start a temporary in-process server, create everything
    on it and throw it away at exit, so `command` is refused (`SetupRefusedError`, with `hint`
    appended). An unreachable server or refused credentials raise `PrefectServerError`. The auth
    string is never part of a message.
    """
    settings = get_current_settings().api
    if not settings.url:
        raise SetupRefusedError(
            f"{command} needs a Prefect server and PREFECT_API_URL is not set (Prefect would start a "
            f"temporary server and throw away what {command} makes): set {PREFECT_SERVER_VARIABLES}{hint}"
        )
    asyncio.run(_say_hello(settings.url, has_auth_string=settings.auth_string is not None))
    return settings.url


async def _say_hello(url: str, has_auth_string: bool) -> None:
    try:
        async with get_client() as client:
            await client.hello()
    except httpx.HTTPStatusError as error:
        status = error.response.status_code
        if status not in {401, 403}:
            raise
        problem = "was refused" if has_auth_string else "is not set"
        raise PrefectServerError(
            f"the Prefect server at {url} answered {status} {error.response.reason_phrase}: "
            f"PREFECT_API_AUTH_STRING {problem}; set it to the server's user:password "
            "(its PREFECT_SERVER_API_AUTH_STRING)"
        ) from None
    except httpx.TransportError as error:  # refused connection, unknown host, timeout
        raise PrefectServerError(
            f"cannot reach the Prefect server at {url} (PREFECT_API_URL): {error}"
        ) from None


def private_webhook_allowed() -> bool:
    """Whether the operator allowed the alert webhook to be a private address."""
    return os.environ.get(PRIVATE_WEBHOOK_SWITCH, "") == "1"


def check_alert_webhook() -> None:
    """Refuse a ``RETRAINER_ALERT_WEBHOOK_URL`` that the Prefect server would refuse to send to.

    The server runs the block's private-address check (`validate_restricted_url`) at SEND time and
    moves a refused action to its dead-letter queue, so setup would report success for alerts that
    never arrive. The same check runs here (from this machine's DNS, which may differ from the
    server's) unless ``RETRAINER_ALERT_WEBHOOK_PRIVATE=1``. The message never contains the URL.
    """
    url = os.environ.get("RETRAINER_ALERT_WEBHOOK_URL")
    if not url or os.environ.get("RETRAINER_SLACK_WEBHOOK_URL") or private_webhook_allowed():
        return  # no generic webhook block (Slack wins), or private addresses are allowed
    try:
        validate_restricted_url(url)
    except ValueError as error:
        raise SetupRefusedError(
            f"RETRAINER_ALERT_WEBHOOK_URL {_restricted_reason(str(error))}, so Prefect's server would not "
            f"send the alerts of block custom-webhook/{ALERTS_BLOCK} there (they would end in its "
            f"dead-letter queue); if the address is meant to be internal, set {PRIVATE_WEBHOOK_SWITCH}=1 "
            "(the block then allows private addresses; the Prefect server must reach the URL from its own "
            "network)"
        ) from None


def _restricted_reason(message: str) -> str:
    # Prefect's message quotes the URL and the address it resolved to: say only which check failed.
    if "private address" in message:
        return "resolves to a private, loopback or link-local address"
    if "could not be resolved" in message:
        return "has a host name this machine cannot resolve"
    return "is not an http(s) URL"


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
            # The server reads this field when it sends; it has no setting of its own for it.
            allow_private_urls=private_webhook_allowed(),
        )
        block.save(ALERTS_BLOCK, overwrite=True)
        return f"custom-webhook/{ALERTS_BLOCK}"
    return None


def create_bucket(settings: S3Settings) -> str:
    """Create the configured bucket if it does not exist and apply the retention rules (both
    idempotent); what was done, for the user. A store without lifecycle rules still gets its bucket.

    Runs never create their bucket (a typo must fail, not start an empty registry), so this is the
    one place, besides the demo and the tests, that does.
    """
    store = open_store(settings)
    created = store.ensure_bucket()
    done = f"{'created' if created else 'found'} bucket {store.bucket!r} at {store.endpoint}"
    try:
        return f"{done}; {apply_retention(store)}"
    except LifecycleUnsupportedError as error:
        return f"{done}; retention rules not applied: {error}"


def apply_retention(store: ObjectStore) -> str:
    """Apply the retention rules (`retrainer.retention`) to the store's existing bucket; what they are,
    for the user. Raises `LifecycleUnsupportedError` where the store has no lifecycle rules."""
    store.require_bucket()
    rules = retention_rules(store.settings)
    if not rules:
        return "no retention rules: every expiry setting is 0"
    store.apply_expiry_rules(rules)
    return "retention rules applied: " + "; ".join(map(str, rules))


def set_up(block_name: str | None, bucket: S3Settings | None = None) -> list[str]:
    """Create the bucket (when `bucket` is given), the missing work pools, the alerts block (from the
    environment) and the automations; what was done, for the user.

    Refuses (`SetupRefusedError`, `PrefectServerError`) before changing anything when there is no
    Prefect server to set up, it refuses the credentials, or the alert webhook cannot be delivered to.
    """
    require_prefect_server(
        "retrainer setup", hint="; to create only the bucket: retrainer setup --bucket-only"
    )
    check_alert_webhook()
    actions = [create_bucket(bucket)] if bucket else []
    actions += [f"created work pool {name!r}" for name in asyncio.run(_ensure_work_pools())]
    saved = save_alerts_block()
    if saved:
        note = ""
        if saved.startswith("custom-webhook/") and private_webhook_allowed():
            note = " (private addresses allowed; the Prefect server must be able to reach the URL)"
        actions.append(f"saved notification block {saved!r}{note}")
        block_name = block_name or saved
    if block_name:
        actions += [f"applied automation {name!r}" for name in apply_automations(block_name)]
    return actions or ["nothing to do: work pools exist"]
