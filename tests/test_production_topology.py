"""The production path as an operator runs it: infra/docker-compose.yml's services, natively.

PostgreSQL (Debian's, the compose image's major version), `prefect server start` with the compose
environment (basic auth on), SeaweedFS with the compose flags and its health check, and both workers
with the compose commands and the .env.example values (tests/compose_stack.py derives all of it from
the compose file). Then what an operator does and sees: setup and deploy from a shell, a Run-button
run whose training the gpu pool takes, a bad batch whose alert reaches a webhook on a private
address, a server restart, and a worker stopped while it trains.
"""

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest

from app.samples import generate_tickets, tickets_to_csv
from retrainer.settings import S3Settings
from retrainer.storage import ObjectStore, S3Store
from tasks.registry import read_history, read_production_pointer
from tests.compose import ROOT, read_compose
from tests.compose_stack import ComposeStack, postgres_binaries
from tests.conftest import wait_for
from tests.http_receiver import Receiver

# The compose services, natively: PostgreSQL, `prefect server start`, SeaweedFS, workers that train.
pytestmark = [pytest.mark.postgres, pytest.mark.prefect, pytest.mark.s3, pytest.mark.training]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def postgres():
    image = read_compose()["services"]["postgres"]["image"]
    binaries = postgres_binaries(image)
    if binaries is None:
        pytest.skip(f"Debian's PostgreSQL for {image} is not installed (.ci/run installs it with apt)")
    return binaries


@pytest.fixture
def stack(tmp_path, postgres):
    compose_stack = ComposeStack(tmp_path)
    try:
        compose_stack.start_postgres(postgres)
        compose_stack.start_seaweedfs()
        compose_stack.start_prefect_server()
        yield compose_stack
    finally:
        compose_stack.stop_all(postgres)


class Api:
    """The Prefect REST API as the UI calls it, with the basic-auth string."""

    def __init__(self, stack: ComposeStack) -> None:
        self.url = stack.api_url
        token = base64.b64encode(stack.env_file["PREFECT_AUTH_STRING"].encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}

    def call(self, path: str, body: dict | None = None, method: str = "POST"):
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def press_run(self, deployment_name: str) -> str:
        """What the UI's Run button does: create a flow run of the deployment with its defaults."""
        [deployment] = self.call(
            "/deployments/filter", {"deployments": {"name": {"any_": [deployment_name]}}}
        )
        return self.call(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]

    def flow_run(self, run_id: str) -> dict:
        return self.call(f"/flow_runs/{run_id}", method="GET")

    def state(self, run_id: str) -> str:
        return self.flow_run(run_id)["state_type"]

    def wait_until_done(self, run_id: str, timeout_s: float) -> str:
        wait_for(lambda: self.state(run_id) in TERMINAL, f"flow run {run_id} finished", timeout_s)
        return self.state(run_id)

    def fine_tune_runs(self) -> list[dict]:
        return self.call(
            "/flow_runs/filter", {"flows": {"name": {"any_": ["fine-tune"]}}, "sort": "START_TIME_ASC"}
        )


def operator(stack: ComposeStack, receiver: Receiver) -> dict[str, str]:
    """The operator's shell: the server and store of infra/.env, and an internal alert webhook."""
    return {
        **stack.operator_environment(),
        "RETRAINER_ALERT_WEBHOOK_URL": receiver.url,
        "RETRAINER_ALERT_WEBHOOK_PRIVATE": "1",
    }


def producer_store(stack: ComposeStack, bucket: str) -> ObjectStore:
    """The bucket as a producer reaches it, with the .env credentials (passed explicitly: boto3's
    default session keeps the first credentials it found in this process's environment)."""
    client = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.env_file["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env_file["AWS_SECRET_ACCESS_KEY"],
    )
    return S3Store(S3Settings(endpoint_url=stack.s3_endpoint, bucket=bucket), client=client)


def run_as_operator(arguments: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_compose_topology_trains_on_the_gpu_pool_alerts_survives_a_restart_and_stops_gracefully(
    stack, tiny_model_dir
):
    with Receiver() as receiver:
        shell = operator(stack, receiver)
        setup = run_as_operator(["app.cli", "setup", "--create-bucket"], shell)
        assert "created bucket" in setup and "created work pool 'gpu'" in setup
        run_as_operator(
            ["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], shell
        )
        store = producer_store(stack, shell["RETRAINER_S3__BUCKET"])
        workers = {
            # What the operator sets in infra/.env for a GPU host, plus a tiny model to keep it quick.
            "RETRAINER_FINE_TUNE_DEPLOYMENT": "fine-tune/fine-tune",
            "RETRAINER_BASE_MODEL": str(tiny_model_dir),
            "RETRAINER_TRAINING__NUM_TRAIN_EPOCHS": "2",
            "RETRAINER_TRAINING__AVERAGE_SHARE": "0",
            "HF_HUB_OFFLINE": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # quicker pick-ups than the default 10 s
        }
        stack.start_worker("cpu-worker", workers)
        stack.start_worker("gpu-worker", {**workers, "RETRAINER_WORKER_DRAIN_S": "300"})
        api = Api(stack)

        # 1. A Run-button run: the cpu pool's retrain hands training to the gpu pool and publishes.
        store.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(150, seed=1, id_prefix="b1")))
        first = api.press_run("nightly-retrain")
        assert api.wait_until_done(first, 300) == "COMPLETED", stack.log("cpu-worker")[-4000:]
        [fine_tune] = api.fine_tune_runs()
        assert (fine_tune["state_type"], fine_tune["work_pool_name"]) == ("COMPLETED", "gpu")
        pointer, _ = read_production_pointer(store)
        assert pointer is not None and pointer.run_id == first
        # The challenger was scored on the eval split where it trained; the cpu worker scored none.
        published = json.loads(store.get(f"models/{pointer.version}/metrics.json")[0])
        assert published["eval_scored"]["cpu_worker"] == 0 < published["eval_scored"]["where_trained"]
        assert store.list_objects("runs/") == []  # checkpoints and the challenger copy deleted once decided

        # 2. A bad batch: the run fails, and the alert reaches the internal webhook (a private address).
        store.put("incoming/broken.csv", b"ticket_id,text\nB-1,only two columns\n")
        failed = api.press_run("nightly-retrain")
        assert api.wait_until_done(failed, 180) == "FAILED"
        wait_for(
            lambda: any("broken.csv" in json.dumps(p) for p in receiver.payloads), "validation alert", 90
        )

        # 3. The server restarts: deployments, pools and automations are in PostgreSQL; workers reconnect.
        assert stack.stop("prefect-server") is not None
        stack.start_prefect_server()
        deployed = {d["name"] for d in api.call("/deployments/filter")}
        assert deployed == {"nightly-retrain", "fine-tune", "forget"}
        assert len(api.call("/automations/filter")) == 2

        # 4. The gpu worker is stopped while it trains: it finishes that run, takes no other, and exits.
        store.put("incoming/batch-2.csv", tickets_to_csv(generate_tickets(150, seed=2, id_prefix="b2")))
        third = api.press_run("nightly-retrain")
        wait_for(
            lambda: any(r["state_type"] == "RUNNING" for r in api.fine_tune_runs()), "fine-tune running", 300
        )
        gpu_worker = stack.processes["gpu-worker"]
        stopped_at = time.monotonic()
        gpu_worker.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        assert api.wait_until_done(third, 300) == "COMPLETED", stack.log("gpu-worker")[-4000:]
        assert gpu_worker.wait(60) == 0
        assert time.monotonic() - stopped_at < 300
        assert [run["state_type"] for run in api.fine_tune_runs()] == ["COMPLETED", "COMPLETED"]
        assert read_history(store)[-1].run_id == third
