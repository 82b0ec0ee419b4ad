"""One idempotent command that prepares a Prefect server for the project: work pools and alerting."""

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from retrainer.automations import apply_automations

WORK_POOLS = {"cpu": "CPU work: the nightly retrain flow", "gpu": "GPU work: fine-tuning"}


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


def set_up(block_name: str | None) -> list[str]:
    """Create the missing work pools and (with a notification block) the automations; says what it did."""
    actions = [f"created work pool {name!r}" for name in asyncio.run(_ensure_work_pools())]
    if block_name:
        actions += [f"applied automation {name!r}" for name in apply_automations(block_name)]
    return actions or ["nothing to do: work pools exist"]
