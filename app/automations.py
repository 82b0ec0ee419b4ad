"""Server-side alerting: Prefect automations that turn the project's events into notifications.

`apply_automations` is idempotent (an automation of the same name is replaced), so it can run on
every deploy. It needs a Prefect server (``PREFECT_API_URL``): automations do not run under the
ephemeral API.
"""

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

from tasks.alerts import RESOURCE_PREFIX, VALIDATION_FAILED_EVENT

PROJECT_FLOWS = ("retrain", "fine-tune")
VALIDATION_AUTOMATION = "ticket-retrainer: validation failed"
FAILED_RUN_AUTOMATION = "ticket-retrainer: flow run failed"


def desired_automations(block_document_id) -> list[Automation]:
    """The automations the project ships, sending through the given notification block."""
    return [
        Automation(
            name=VALIDATION_AUTOMATION,
            description="A batch was rejected by validation: it is quarantined and training was skipped.",
            trigger=EventTrigger(
                expect={VALIDATION_FAILED_EVENT},
                match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_document_id,
                    subject="ticket-retrainer: validation failed for {{ event.payload.batch }}",
                    body=(
                        "Batch {{ event.payload.batch }} (run {{ event.payload.run_id }}) was rejected: "
                        "{{ event.payload.reasons | join('; ') }}. Rows: {{ event.payload.rows }}, "
                        "quarantined: {{ event.payload.quarantined }}."
                    ),
                )
            ],
        ),
        Automation(
            name=FAILED_RUN_AUTOMATION,
            description="A retrain or fine-tune flow run failed or crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(PROJECT_FLOWS)},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_document_id,
                    subject="ticket-retrainer: flow run {{ flow_run.name }} {{ flow_run.state.name }}",
                    body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
                    "{{ flow_run.state.message }}",
                )
            ],
        ),
    ]


def apply_automations(block_name: str) -> list[str]:
    """Create or replace the project's automations so they notify through `block_name` (``type/name``)."""
    block = Block.load(block_name)
    names = []
    for automation in desired_automations(block._block_document_id):
        _delete_existing(automation.name)
        automation.create()
        names.append(automation.name)
    return names


def _delete_existing(name: str) -> None:
    try:
        existing = Automation.read(name=name)
    except ValueError:  # Prefect raises ValueError when no automation has that name
        return
    existing.delete()
