"""Deployments: they load and validate without a server, and run for real on one."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from retrainer.samples import generate_tickets, tickets_to_csv
from tasks.registry import read_production_pointer
from tests.prefect_server import PrefectServer, stop_worker

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


# Values for parameters a caller must always pass (fine-tune is started by retrain with these).
REQUIRED_AT_RUN = {"dataset_version": "ds-20260101T000000Z-0123456789", "output_prefix": "runs/r/challenger/"}


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


def _api(server: PrefectServer, path: str, body: dict | None = None) -> dict | list:
    request = urllib.request.Request(
        server.api_url + path,
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _python(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_deployed_nightly_retrain_started_like_the_ui_run_button_trains_on_the_gpu_pool_and_publishes(
    flow_store_env, tmp_path
):
    flow_store_env.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(150, seed=1)))
    with PrefectServer(tmp_path / "prefect") as server:
        env = {
            **server.environment(),
            "RETRAINER_CHECKOUT_DIR": str(ROOT),
            "RETRAINER_FINE_TUNE_DEPLOYMENT": "fine-tune/fine-tune",  # retrain hands training to the gpu pool
            "RETRAINER_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook",  # setup saves the alerts block from it
            "RETRAINER_ALERT_WEBHOOK_PRIVATE": "1",
        }
        for command in (
            ["-m", "retrainer.cli", "setup"],
            ["-m", "retrainer.cli", "setup"],  # idempotent
            ["-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)],
        ):
            done = _python(command, env, ROOT, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        automations = _api(server, "/automations/filter", {})
        assert sorted(a["name"] for a in automations) == [
            "ticket-retrainer: flow run failed",
            "ticket-retrainer: validation failed",
        ]  # set up twice, created once
        [deployment] = _api(
            server, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly-retrain"]}}}
        )
        assert deployment["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        with pytest.raises(urllib.error.HTTPError) as refused:  # the server validates the typed parameters
            _api(
                server,
                f"/deployments/{deployment['id']}/create_flow_run",
                {"parameters": {"training": {"learning_rate": 5}}},
            )
        assert refused.value.code in {409, 422} and "learning_rate" in refused.value.read().decode()
        flow_run = _api(server, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {}})
        gpu_worker = subprocess.Popen(  # serves the fine-tune run that retrain starts
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--type", "process"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            worker = _python(
                ["-m", "prefect", "worker", "start", "--pool", "cpu", "--type", "process", "--run-once"],
                env,
                tmp_path,
            )
        finally:
            stop_worker(gpu_worker)
        fine_tune_runs = _api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["fine-tune"]}}})
        with urllib.request.urlopen(f"{server.api_url}/flow_runs/{flow_run['id']}", timeout=30) as response:
            state = json.loads(response.read())["state"]

    assert state["type"] == "COMPLETED", worker.stdout[-3000:] + worker.stderr[-3000:]
    assert [run["state_type"] for run in fine_tune_runs] == ["COMPLETED"]  # trained by the gpu pool's worker
    pointer, _ = read_production_pointer(flow_store_env)
    assert pointer is not None and pointer.run_id == flow_run["id"]
