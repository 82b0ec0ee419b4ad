"""Deployments load and validate without a server (a real server runs them in test_production_topology.py)."""

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


# Values for parameters a caller must always pass (fine-tune is started by retrain with these; forget is
# given the ids and who asked).
REQUIRED_AT_RUN = {
    "dataset_version": "ds-20260101T000000Z-0123456789",
    "output_prefix": "runs/r/challenger/",
    "ticket_ids": ["T-1", "T-2"],
    "requested_by": "dpo@example.com",
}


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_every_deployment_loads_and_its_defaults_validate(deployment):
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))

    required = set(flow.parameters.required or [])
    flow.validate_parameters(
        {**{name: REQUIRED_AT_RUN[name] for name in required}, **deployment["parameters"]}
    )
    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        ZoneInfo(schedule["timezone"])
    assert deployment["work_pool"]["name"] in {"cpu", "gpu"}


def test_nightly_retrain_runs_one_at_a_time_and_its_form_is_typed():
    [nightly] = [d for d in _deployments() if d["name"] == "nightly-retrain"]
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    schema = load_flow_from_entrypoint(str(ROOT / nightly["entrypoint"])).parameters.model_dump()
    training = schema["definitions"]["TrainingConfig"]["properties"]
    assert (
        training["learning_rate"]["maximum"] == 1.0
        and training["per_device_train_batch_size"]["minimum"] == 1
    )
    assert "force_reason" in schema["properties"]


def test_forget_asks_for_ids_and_who_and_runs_one_request_at_a_time():
    [deployment] = [d for d in _deployments() if d["name"] == "forget"]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))

    assert set(flow.parameters.required) == {"ticket_ids", "requested_by"}
    assert flow.parameters.properties["ticket_ids"]["type"] == "array"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert "schedules" not in deployment
