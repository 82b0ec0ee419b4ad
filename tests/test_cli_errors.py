"""The `retrainer` command's failures: one clear line on stderr and an exit code, never a traceback.

Everything runs against the real SeaweedFS; `run` against the real Prefect API of the test session.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import boto3
import psutil
import pytest

import tasks.registry as registry
from app import cli
from retrainer.settings import CLI_ENVIRONMENT_DEFAULTS, S3Settings
from retrainer.storage import BucketNotFoundError, ObjectStore
from tasks.registry import read_production_pointer
from tests.registry_helpers import promote, publish_fake_version


@pytest.fixture(autouse=True)
def _restore_cli_environment(monkeypatch):
    """`main` sets quiet defaults in os.environ; setting them here first makes the test undo them."""
    for name, value in CLI_ENVIRONMENT_DEFAULTS.items():
        monkeypatch.setenv(name, os.environ.get(name, value))


@pytest.fixture
def cli_env(monkeypatch, s3_settings, tmp_path) -> S3Settings:
    """The CLI's environment pointed at this test's bucket (which does not exist until a test makes it)."""
    monkeypatch.setenv("RETRAINER_S3__ENDPOINT_URL", s3_settings.endpoint_url)
    monkeypatch.setenv("RETRAINER_S3__BUCKET", s3_settings.bucket)
    monkeypatch.setenv("RETRAINER_WORK_DIR", str(tmp_path / "work"))
    return s3_settings


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("retrainer: error: ")]


def _assert_one_clear_error(err: str, expected: str) -> None:
    assert "Traceback" not in err
    [line] = _error_lines(err)
    assert expected in line, line


def _publish_and_promote(store: ObjectStore, tmp_path, version: str, previous: str | None) -> None:
    publish_fake_version(store, tmp_path, version)
    promote(store, version, previous)


def test_a_missing_bucket_is_one_line_exit_1_and_is_not_created(cli_env, capsys):
    code = cli.main(["models", "list"])

    _, err = capsys.readouterr()
    assert code == 1
    _assert_one_clear_error(
        err,
        f"bucket {cli_env.bucket!r} does not exist at {cli_env.endpoint_url}; "
        "create it with `retrainer setup --create-bucket` or your infrastructure",
    )
    with pytest.raises(BucketNotFoundError):
        ObjectStore(cli_env).require_bucket()


def test_bad_credentials_are_one_line_exit_1(cli_env, store, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it read first

    code = cli.main(["models", "list"])

    assert code == 1
    _assert_one_clear_error(capsys.readouterr().err, f"access to bucket {cli_env.bucket!r}")


def test_no_production_model_is_one_line_exit_2(cli_env, store, capsys):
    code = cli.main(["predict", "The app crashes on save"])

    assert code == 2
    _assert_one_clear_error(capsys.readouterr().err, "no model in production yet")


def test_models_list_shows_each_versions_status(cli_env, store, tmp_path, capsys):
    _publish_and_promote(store, tmp_path, "m-1", None)
    _publish_and_promote(store, tmp_path, "m-2", "m-1")
    publish_fake_version(store, tmp_path, "m-3")  # killed before its smoke test

    assert cli.main(["models", "list"]) == 0

    rows = capsys.readouterr().out.splitlines()[1:-1]
    statuses = {row[2:].split()[0]: (row[:2], row[2:].split()[1]) for row in rows}
    assert statuses == {"m-1": ("  ", "servable"), "m-2": ("* ", "production"), "m-3": ("  ", "interrupted")}


def test_rollback_to_an_unknown_or_interrupted_version_is_refused_with_exit_2(
    cli_env, store, tmp_path, capsys
):
    _publish_and_promote(store, tmp_path, "m-1", None)
    publish_fake_version(store, tmp_path, "m-2")  # killed before its smoke test

    assert cli.main(["rollback", "--to", "m-nope"]) == 2
    _assert_one_clear_error(capsys.readouterr().err, "m-nope is not a published model version")
    assert cli.main(["rollback", "--to", "m-2"]) == 2
    _assert_one_clear_error(
        capsys.readouterr().err,
        "m-2 never passed its smoke test (interrupted run): it may not serve production",
    )
    assert read_production_pointer(store)[0].version == "m-1"


def test_a_rollback_that_loses_the_race_is_one_line_exit_1(cli_env, store, tmp_path, monkeypatch, capsys):
    _publish_and_promote(store, tmp_path, "m-1", None)
    _publish_and_promote(store, tmp_path, "m-2", "m-1")
    real_read_history = registry.read_history

    def history_then_another_promotion(store_):
        history = real_read_history(store_)
        _publish_and_promote(store_, tmp_path, "m-3", "m-2")  # lands after the rollback read the pointer
        return history

    monkeypatch.setattr(registry, "read_history", history_then_another_promotion)

    assert cli.main(["rollback"]) == 1
    _assert_one_clear_error(capsys.readouterr().err, "production changed while rolling back to m-1")
    assert read_production_pointer(store)[0].version == "m-3"


def test_setup_creates_the_bucket_only_when_asked_and_idempotently(cli_env, prefect_api, capsys):
    assert cli.main(["setup", "--create-bucket"]) == 0
    assert f"created bucket {cli_env.bucket!r} at {cli_env.endpoint_url}" in capsys.readouterr().out
    assert cli.main(["setup", "--create-bucket"]) == 0
    assert f"found bucket {cli_env.bucket!r}" in capsys.readouterr().out
    ObjectStore(cli_env).require_bucket()


def test_run_against_a_missing_bucket_fails_with_its_outcome_and_creates_nothing(retrain_env, capsys):
    code = cli.main(["run"])

    out, err = capsys.readouterr()
    assert code == 1
    outcome = json.loads(out)
    message = f"bucket {retrain_env.bucket!r} does not exist at {retrain_env.endpoint_url}"
    assert outcome["status"] == "failed" and message in outcome["reasons"][-1]
    _assert_one_clear_error(err, message)
    with pytest.raises(BucketNotFoundError):
        ObjectStore(retrain_env).require_bucket()


def test_a_run_that_fails_validation_prints_its_outcome_and_one_error_line(flow_store_env, capsys):
    flow_store_env.put("incoming/bad.csv", b"ticket_id,label\nB-1,bug\n")  # no text column

    code = cli.main(["run"])

    out, err = capsys.readouterr()
    assert code == 1
    outcome = json.loads(out)
    assert outcome["status"] == "validation-failed" and outcome["batches_ingested"] == 1
    assert "incoming/bad.csv: missing required column(s) text" in outcome["reasons"][-1]
    _assert_one_clear_error(
        err, "incoming/bad.csv: missing required column(s) text (found: ticket_id, label)"
    )


@pytest.mark.prefect  # the run starts an ephemeral Prefect server of its own
@pytest.mark.chaos
def test_a_killed_run_takes_its_ephemeral_prefect_server_with_it(store, tmp_path):
    """Slow (~40 s here): a real `retrainer run` starts its own ephemeral Prefect API server."""
    env = {
        **os.environ,
        "RETRAINER_S3__ENDPOINT_URL": store.settings.endpoint_url,
        "RETRAINER_S3__BUCKET": store.bucket,
        "RETRAINER_WORK_DIR": str(tmp_path / "work"),
        "PREFECT_HOME": str(tmp_path / f"prefect-{uuid.uuid4().hex[:6]}"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    env.pop("PREFECT_API_URL", None)  # the ephemeral server is what is tested
    parent = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        server = _wait_for_listening_uvicorn_child(psutil.Process(parent.pid), timeout_s=150)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        gone, _ = psutil.wait_procs([server], timeout=15)

        assert gone, f"the ephemeral Prefect server (pid {server.pid}) outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if server is not None and _alive(server):
            server.kill()  # only the process this test made; the assertion above has already failed


def _wait_for_listening_uvicorn_child(parent: psutil.Process, timeout_s: float) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE, "retrainer run exited early"
        for child in parent.children(recursive=True):
            try:
                if "uvicorn" in child.cmdline() and any(
                    connection.status == psutil.CONN_LISTEN for connection in child.net_connections("inet")
                ):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no listening uvicorn child of retrainer run within {timeout_s}s")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_run_refuses_the_old_preset_name_naming_the_new_one(capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["run", "--preset", "seed"])

    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument --preset: the preset 'seed' was renamed 'reference'" in err
