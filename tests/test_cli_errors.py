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
from app.samples import generate_tickets
from retrainer.settings import CLI_ENVIRONMENT_DEFAULTS, S3Settings
from retrainer.storage import BucketNotFoundError, ObjectStore, S3Store
from tasks.dataset import with_splits
from tasks.registry import publish_model, read_production_pointer
from tests.registry_helpers import damage, labelled_copy, promote, publish_fake_version


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
        S3Store(cli_env).require_bucket()


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


def test_a_corrupt_champion_is_listed_refused_in_one_line_and_served_again_once_restored(
    cli_env, store, tiny_model_dir, tmp_path, capsys
):
    _publish_and_promote(store, tmp_path, "m-1", None)
    labelled_copy(tiny_model_dir, tmp_path / "m-2")
    publish_model(store, tmp_path / "m-2", "m-2", {"accuracy": 0.9})
    promote(store, "m-2", "m-1")
    weights = store.uri("models/m-2/model.safetensors")
    original = damage(store, "models/m-2/model.safetensors", "truncate")

    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:3] == ["*", "m-2", "corrupt"]
    assert out[-1].startswith(
        f"m-2 is corrupt: {weights} is {len(original) // 2:,} bytes, {len(original):,} rec"
    )
    for command in (["predict", "The app crashes on save"], ["score", str(_tickets_csv(tmp_path))]):
        assert cli.main(command) == 1
        _assert_one_clear_error(capsys.readouterr().err, f"model version m-2 is corrupt: {weights} is ")

    store.put("models/m-2/model.safetensors", original)  # restored: the bad copy did not stick

    assert cli.main(["predict", "The app crashes on save"]) == 0
    assert capsys.readouterr().out.startswith("model m-2\n")


def test_rollback_to_a_corrupt_version_is_refused_with_exit_2(cli_env, store, tmp_path, capsys):
    _publish_and_promote(store, tmp_path, "m-1", None)
    _publish_and_promote(store, tmp_path, "m-2", "m-1")
    damage(store, "models/m-1/model.safetensors", "flip")

    assert cli.main(["rollback", "--to", "m-1"]) == 2
    _assert_one_clear_error(capsys.readouterr().err, "m-1 is corrupt and may not serve production: ")
    assert read_production_pointer(store)[0].version == "m-2"


def _tickets_csv(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("text\nThe app crashes on save\n")
    return path


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
    S3Store(cli_env).require_bucket()


def test_run_against_a_missing_bucket_fails_with_its_outcome_and_creates_nothing(retrain_env, capsys):
    code = cli.main(["run"])

    out, err = capsys.readouterr()
    assert code == 1
    outcome = json.loads(out)
    message = f"bucket {retrain_env.bucket!r} does not exist at {retrain_env.endpoint_url}"
    assert outcome["status"] == "failed" and message in outcome["reasons"][-1]
    _assert_one_clear_error(err, message)
    with pytest.raises(BucketNotFoundError):
        S3Store(retrain_env).require_bucket()


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


# --- invalid settings and damaged dataset objects: the real command, in a process of its own ----------

SECRET = "s3cr3t-9f3a"  # a password inside an endpoint URL: never printed


def _cli(*args: str, **environment: str) -> subprocess.CompletedProcess:
    """`retrainer ARGS` as an operator runs it, with `environment` on top of this test's."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "variable", "value", "problem"),
    [
        (
            ["models", "list"],
            "RETRAINER_VALIDATION__MAX_BAD_ROW_SHARE",
            "abc",
            "Input should be a valid number",
        ),
        (
            ["predict", "Login fails"],
            "RETRAINER_TRAINING_PRESET",
            "nope",
            "Input should be 'tuned', 'reference'",
        ),
        (
            ["setup", "--bucket-only"],
            "RETRAINER_S3__ENDPOINT_URL",
            "not-a-url",
            "not an http:// or https:// URL",
        ),
        (["forget", "T-1"], "RETRAINER_S3__ENDPOINT_URL", f"http://user:{SECRET}@:x", "not an http://"),
        (["run"], "RETRAINER_INGEST__COLUMN_ALIASES", "{not json", "cannot be parsed"),
        (
            ["datasets", "gc"],
            "RETRAINER_S3__MAX_ATTEMPTS",
            "-1",
            "Input should be greater than or equal to 1",
        ),
    ],
    ids=["models-list", "predict", "setup", "forget", "run", "datasets-gc"],
)
def test_an_invalid_setting_is_one_line_naming_it_without_its_value_exit_2(command, variable, value, problem):
    done = _cli(*command, **{variable: value})

    assert done.returncode == 2, done.stderr
    _assert_one_clear_error(done.stderr, "invalid setting ")
    [line] = _error_lines(done.stderr)
    assert variable.split("__")[0] in line and problem in line, line
    assert value not in done.stdout + done.stderr and SECRET not in done.stdout + done.stderr


def test_a_truncated_dataset_version_file_is_one_line_naming_it_exit_1(cli_env, store):
    from tasks.dataset import version_key, write_curated

    rows = generate_tickets(6, seed=1).assign(source_key="incoming/a.csv", source_etag='"e"', source_row=1)
    version = write_curated(store, with_splits(None, rows, 0.2, 0.1))
    key = version_key(store, version)
    store.put(key, store.get(key)[0][:40])  # cut short, as by a failed copy

    done = _cli("datasets", "gc")

    assert done.returncode == 1, done.stderr
    _assert_one_clear_error(
        done.stderr, f"{store.uri(key)}, the file of dataset version {version}, cannot be read (Invalid JSON"
    )


def test_a_run_whose_dataset_part_is_gone_fails_in_one_line_naming_it(flow_store_env, capsys):
    from tasks.dataset import version_parts, write_curated
    from tasks.manifest import Manifest, commit_manifest

    store = flow_store_env
    rows = generate_tickets(6, seed=1).assign(source_key="incoming/a.csv", source_etag='"e"', source_row=1)
    version = write_curated(store, with_splits(None, rows, 0.2, 0.1))
    commit_manifest(store, Manifest(dataset_version=version), None)
    [part] = version_parts(store, version)
    store.delete(part.key)

    started = time.monotonic()
    code = cli.main(["run"])

    out, err = capsys.readouterr()
    assert code == 1
    message = (
        f"dataset part {store.uri(part.key)} is gone: restore it from the bucket's versioning or a backup"
    )
    assert json.loads(out)["reasons"][-1] == message
    _assert_one_clear_error(err, message)
    assert time.monotonic() - started < 21  # not retried: asking again cannot bring it back
