"""`retrainer setup` refuses what cannot work, and the deployments find their code at run time.

The pull step `app.deploy_steps.enter_checkout` is tested as a function and as `prefect deploy`
stores it; setup and `alerts apply` against no server, against a real `prefect server start` with
basic auth (as in infra/docker-compose.yml), and with an alert webhook on a private address that the
server must then really deliver to.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from app.deploy_steps import CheckoutNotFoundError, enter_checkout
from app.platform import ALERTS_BLOCK
from retrainer.storage import BucketNotFoundError, S3Store
from tasks.alerts import RESOURCE_PREFIX, VALIDATION_FAILED_EVENT
from tests.http_receiver import Receiver
from tests.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
AUTH = "operator:s3cret-auth-string"
PULL_STEP = "app.deploy_steps.enter_checkout"


# --- the pull step, as a function -------------------------------------------------------------


def _checkout(root: Path) -> Path:
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "retrain.py").write_text("")
    return root


def test_enter_checkout_changes_into_the_directory_named_at_run_time(monkeypatch, tmp_path):
    checkout = _checkout(tmp_path / "app")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRAINER_CHECKOUT_DIR", str(checkout))

    assert enter_checkout() == {"directory": str(checkout)}
    assert Path.cwd() == checkout


def test_enter_checkout_without_the_variable_enters_the_installed_flows_package_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RETRAINER_CHECKOUT_DIR", raising=False)

    assert enter_checkout() == {"directory": str(ROOT)}  # this editable install: the checkout
    assert Path.cwd() == ROOT


def test_enter_checkout_finds_flows_installed_into_site_packages(tmp_path):
    """As in the worker image (`pip install /app`): flows/ lies in site-packages, not in the checkout."""
    site_packages = tmp_path / "site-packages"
    shutil.copytree(ROOT / "flows", site_packages / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "RETRAINER_CHECKOUT_DIR"}
    env["PYTHONPATH"] = str(site_packages)  # ahead of the editable install's path hook
    step = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from {PULL_STEP.rsplit('.', 1)[0]} import enter_checkout; print(enter_checkout())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert step.returncode == 0, step.stderr
    assert step.stdout.strip() == str({"directory": str(site_packages)})


def test_enter_checkout_names_the_variable_and_the_path_when_the_directory_is_missing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "not-here"
    monkeypatch.setenv("RETRAINER_CHECKOUT_DIR", str(missing))

    with pytest.raises(CheckoutNotFoundError) as error:
        enter_checkout()

    assert f"RETRAINER_CHECKOUT_DIR={missing}: no such directory" in str(error.value)
    assert Path.cwd() == tmp_path


def test_enter_checkout_refuses_a_directory_without_the_flows(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("RETRAINER_CHECKOUT_DIR", str(tmp_path / "empty"))

    with pytest.raises(CheckoutNotFoundError) as error:
        enter_checkout()

    assert f"{tmp_path / 'empty' / 'flows' / 'retrain.py'} does not exist" in str(error.value)
    assert "RETRAINER_CHECKOUT_DIR" in str(error.value)
    assert Path.cwd() == tmp_path


def test_every_deployment_uses_the_run_time_pull_step():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    assert config["pull"] == [{PULL_STEP: {}}]
    assert "{{" not in json.dumps(config["pull"])  # nothing templated by `prefect deploy`
    assert all("pull" not in deployment for deployment in config["deployments"])


# --- setup without a Prefect server -----------------------------------------------------------


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no Prefect server configured (and a fresh, empty PREFECT_HOME)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILES_PATH"}
        and not key.startswith("RETRAINER_")
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    return {**env, **extra}


def _store_env(tmp_path: Path, s3_settings, **extra: str) -> dict[str, str]:
    """`_bare_env` pointed at this test's bucket."""
    return _bare_env(
        tmp_path,
        RETRAINER_S3__ENDPOINT_URL=s3_settings.endpoint_url,
        RETRAINER_S3__BUCKET=s3_settings.bucket,
        **extra,
    )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("retrainer: error: ")]
    return line


def _no_temporary_server_was_started(env: dict[str, str]) -> bool:
    return not list(Path(env["PREFECT_HOME"]).glob("*.db"))  # an ephemeral server makes prefect.db


@pytest.mark.parametrize(
    "command", [["setup"], ["setup", "--create-bucket"], ["alerts", "apply", "--block", "slack-webhook/x"]]
)
def test_without_prefect_api_url_setup_and_alerts_refuse_and_name_the_variables(
    command, s3_settings, tmp_path
):
    env = _store_env(tmp_path, s3_settings)

    done = _cli(env, *command)

    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_error_line(done)
    assert "PREFECT_API_URL" in line and "PREFECT_API_AUTH_STRING (user:password)" in line
    assert _no_temporary_server_was_started(env)
    with pytest.raises(BucketNotFoundError):  # refused before anything was done
        S3Store(s3_settings).require_bucket()


def test_make_deploy_without_prefect_api_url_refuses_and_names_the_variables(tmp_path):
    # `-o` marks the virtualenv up to date: this checks the deploy rule alone, never reinstalls.
    done = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "deploy"],
        cwd=ROOT,
        env=_bare_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "set PREFECT_API_URL" in done.stderr and "PREFECT_API_AUTH_STRING" in done.stderr
    assert not (tmp_path / "prefect-home").exists()  # prefect deploy never ran


def test_setup_bucket_only_needs_no_prefect_server(s3_settings, tmp_path):
    env = _store_env(tmp_path, s3_settings)

    done = _cli(env, "setup", "--bucket-only")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"created bucket {s3_settings.bucket!r} at {s3_settings.endpoint_url}")
    S3Store(s3_settings).require_bucket()
    assert _no_temporary_server_was_started(env)


def test_setup_retention_applies_the_rules_without_a_prefect_server_and_is_idempotent(
    s3_settings, store, tmp_path
):
    env = _store_env(tmp_path, s3_settings, RETRAINER_S3__QUARANTINE_EXPIRE_DAYS="7")

    first = _cli(env, "setup", "--retention")
    second = _cli(env, "setup", "--retention")

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "objects under quarantine/: 7 days" in first.stdout
    rules = store._client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    assert sorted(rule["ID"] for rule in rules) == [
        "ticket-retrainer-expire-noncurrent-versions",
        "ticket-retrainer-expire-quarantine",
        "ticket-retrainer-expire-runs",
        "ticket-retrainer-expire-superseded-datasets",
    ]  # twice applied, once present
    assert {rule["ID"]: rule for rule in rules}["ticket-retrainer-expire-quarantine"]["Expiration"] == {
        "Days": 7
    }
    assert _no_temporary_server_was_started(env)


def test_setup_retention_on_a_missing_bucket_fails_in_one_line(s3_settings, tmp_path):
    env = _bare_env(
        tmp_path,
        RETRAINER_S3__ENDPOINT_URL=s3_settings.endpoint_url,
        RETRAINER_S3__BUCKET="no-such-bucket-here",
    )

    done = _cli(env, "setup", "--retention")

    assert done.returncode == 1
    assert "no-such-bucket-here" in _one_error_line(done)


# --- a real Prefect server with basic auth ----------------------------------------------------


class _AuthPrefectServer(PrefectServer):
    """`prefect server start` with basic auth on, as infra/docker-compose.yml runs it."""

    auth = AUTH

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "PREFECT_SERVER_API_AUTH_STRING": AUTH}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    with _AuthPrefectServer(tmp_path_factory.mktemp("prefect-auth-server")) as server:
        yield server


def _client_env(
    server: PrefectServer, tmp_path: Path, auth: str | None = AUTH, **extra: str
) -> dict[str, str]:
    env = _bare_env(tmp_path, PREFECT_API_URL=server.api_url, **extra)
    env["PREFECT_HOME"] = str(server.home)
    if auth is not None:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def _server_state(server: PrefectServer) -> dict[str, list]:
    """What setup writes to the server: work pools, block documents, automations (with timestamps)."""
    return {
        path: sorted((item["name"], item.get("updated")) for item in server.api(path))
        for path in ("/work_pools/filter", "/block_documents/filter", "/automations/filter")
    }


@pytest.mark.prefect  # the tests from here on use `auth_server`, a `prefect server start` of their own
@pytest.mark.parametrize("auth", [None, "operator:wrong"], ids=["no-auth-string", "wrong-auth-string"])
@pytest.mark.parametrize("command", [["setup"], ["alerts", "apply", "--block", "slack-webhook/x"]])
def test_against_a_server_with_basic_auth_a_missing_or_wrong_auth_string_is_one_line(
    auth_server, tmp_path, auth, command
):
    done = _cli(_client_env(auth_server, tmp_path, auth=auth), *command)

    assert done.returncode == 1, done.stdout + done.stderr
    line = _one_error_line(done)
    assert "PREFECT_API_AUTH_STRING" in line and auth_server.api_url in line
    assert "wrong" not in done.stdout + done.stderr  # the auth string is never printed


@pytest.mark.prefect
def test_setup_refuses_a_private_alert_webhook_unless_allowed_and_never_prints_the_url(auth_server, tmp_path):
    before = _server_state(auth_server)
    with Receiver() as receiver:
        env = _client_env(auth_server, tmp_path, RETRAINER_ALERT_WEBHOOK_URL=receiver.url)
        done = _cli(env, "setup")

    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_error_line(done)
    assert "RETRAINER_ALERT_WEBHOOK_PRIVATE=1" in line and f"custom-webhook/{ALERTS_BLOCK}" in line
    assert "127.0.0.1" not in done.stdout + done.stderr and "/hook" not in done.stdout + done.stderr
    assert _server_state(auth_server) == before  # refused before anything was written
    assert receiver.payloads == []


def _emit_validation_failed(server: PrefectServer, batch: str) -> None:
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": VALIDATION_FAILED_EVENT,
        "resource": {"prefect.resource.id": RESOURCE_PREFIX + batch, "prefect.resource.name": batch},
        "payload": {
            "batch": batch,
            "run_id": "r-1",
            "reasons": ["no text column"],
            "rows": 3,
            "quarantined": 3,
        },
    }
    server.api("/events", [event])


@pytest.mark.prefect
def test_a_private_alert_webhook_allowed_by_the_operator_is_delivered_by_the_server(auth_server, tmp_path):
    with Receiver() as receiver:
        env = _client_env(
            auth_server,
            tmp_path,
            RETRAINER_ALERT_WEBHOOK_URL=receiver.url,
            RETRAINER_ALERT_WEBHOOK_PRIVATE="1",
        )
        done = _cli(env, "setup")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"saved notification block 'custom-webhook/{ALERTS_BLOCK}'" in done.stdout
        assert "/hook" not in done.stdout + done.stderr  # the URL is a secret

        _emit_validation_failed(auth_server, "incoming/private.csv")
        deadline = time.monotonic() + 60
        while not receiver.payloads and time.monotonic() < deadline:
            time.sleep(0.5)

    [payload] = receiver.payloads
    assert payload["subject"] == "ticket-retrainer: validation failed for incoming/private.csv"
    assert "no text column" in payload["text"]


# --- `prefect deploy` stores the step, not the deploying shell's path -------------------------


@pytest.fixture(scope="module")
def deployed(auth_server, tmp_path_factory) -> list[dict]:
    """Both deployments, applied from a shell whose RETRAINER_CHECKOUT_DIR exists nowhere."""
    env = _client_env(
        auth_server, tmp_path_factory.mktemp("deploy"), RETRAINER_CHECKOUT_DIR="/nonexistent-at-deploy-time"
    )
    setup = _cli(env, "setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(PREFECT_YAML),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    return auth_server.api("/deployments/filter")


@pytest.mark.prefect
def test_prefect_deploy_stores_a_pull_step_that_reads_the_checkout_dir_at_run_time(
    auth_server, deployed, tmp_path
):
    assert sorted(d["name"] for d in deployed) == ["fine-tune", "forget", "nightly-retrain"]
    for deployment in deployed:
        assert deployment["pull_steps"] == [{PULL_STEP: {}}], deployment["pull_steps"]

    # The stored steps, run by Prefect's own step runner on a "worker" whose checkout is elsewhere.
    worker_checkout = _checkout(tmp_path / "worker-app")
    run_steps = (
        "import asyncio, json, sys; from prefect.deployments.steps.core import run_steps; "
        "print(asyncio.run(run_steps(json.loads(sys.argv[1])))['directory'])"
    )
    pulled = subprocess.run(
        [sys.executable, "-c", run_steps, json.dumps(deployed[0]["pull_steps"])],
        cwd=tmp_path,
        env={**_client_env(auth_server, tmp_path), "RETRAINER_CHECKOUT_DIR": str(worker_checkout)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().splitlines()[-1] == str(worker_checkout)


@pytest.mark.prefect
def test_a_worker_without_the_checkout_says_why_in_the_run_log(auth_server, deployed, tmp_path):
    """Before: the UI showed only "Process exited with status code: 1"; the reason was in the worker's
    own output."""
    [nightly] = [d for d in deployed if d["name"] == "nightly-retrain"]
    flow_run = auth_server.api(f"/deployments/{nightly['id']}/create_flow_run", {"parameters": {}})
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            "cpu",
            "--type",
            "process",
            "--run-once",
        ],
        cwd=tmp_path,
        env=_client_env(auth_server, tmp_path, RETRAINER_CHECKOUT_DIR="/nonexistent-on-worker"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    state = auth_server.api(f"/flow_runs/{flow_run['id']}", method="GET")["state"]
    assert state["type"] == "CRASHED", worker.stdout[-3000:] + worker.stderr[-3000:]
    logs = auth_server.api("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    errors = [log["message"] for log in logs if log["level"] >= 40]
    assert any("RETRAINER_CHECKOUT_DIR=/nonexistent-on-worker: no such directory" in m for m in errors), [
        log["message"][:300] for log in logs
    ]
