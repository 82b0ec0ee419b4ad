"""Fault injection: the object store killed and restarted, a worker SIGKILLed, runs and rollbacks racing.

Each test ends by checking the bucket's invariants (tests/consistency.py): no row lost or doubled,
one winner, and a manifest, pointer and history that agree. Run apart with ``make chaos``.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from app.seaweed import LocalS3
from flows.retrain import retrain
from retrainer.settings import S3Settings
from retrainer.storage import ObjectStore, PreconditionFailedError, S3Store
from tasks.registry import (
    list_versions,
    read_history,
    read_production_pointer,
    rollback,
)
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.consistency import assert_consistent
from tests.registry_helpers import promote, publish_fake_version
from tests.retrain_process import QUICK  # one epoch: the faults come around ingest and publish
from tests.tickets import drop_batch

pytestmark = pytest.mark.chaos

_RESTARTS: list[threading.Timer] = []  # pending "supervisor" restarts, awaited before a server stops
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_server(local_s3, tmp_path):
    """A SeaweedFS of this test's own, to kill and restart (the session's server is shared)."""
    server = LocalS3(tmp_path / "weed", TEST_ACCESS_KEY, TEST_SECRET_KEY, tmp_path / "weed.log").start()
    yield server
    _await_restarts()
    server.stop()


def _await_restarts() -> None:
    while _RESTARTS:
        _RESTARTS.pop().join()


@pytest.fixture
def chaos_store(s3_server, monkeypatch, tiny_model_dir, tmp_path, prefect_api) -> ObjectStore:
    """The retrain flow's store on the test's own server; few attempts (3, over about a second), so the
    run meets the fault instead of riding out the restart, as the default (10 over up to a minute) would."""
    settings = S3Settings(endpoint_url=s3_server.endpoint_url, bucket="chaos", max_attempts=3)
    for name, value in {
        "RETRAINER_S3__ENDPOINT_URL": settings.endpoint_url,
        "RETRAINER_S3__BUCKET": settings.bucket,
        "RETRAINER_S3__MAX_ATTEMPTS": "3",
        "RETRAINER_BASE_MODEL": str(tiny_model_dir),
        "RETRAINER_WORK_DIR": str(tmp_path / "work"),
    }.items():
        monkeypatch.setenv(name, value)
    store = S3Store(settings)
    store.ensure_bucket()
    return store


def _kill_server_after_put(monkeypatch, server: LocalS3, key_prefix: str) -> threading.Event:
    """SIGKILL the object store right after the first successful write under `key_prefix`, and start it
    again 2 s later, as a supervisor would; the event is set once it was killed."""
    real_put = ObjectStore.put
    killed = threading.Event()

    def put(self, key, data, **conditions):
        etag = real_put(self, key, data, **conditions)
        if key.startswith(key_prefix) and not killed.is_set():
            server.kill()
            killed.set()
            _RESTARTS.append(threading.Timer(2.0, server.start))
            _RESTARTS[-1].start()
        return etag

    monkeypatch.setattr(ObjectStore, "put", put)
    return killed


def _run_surviving_faults(**parameters):
    """A retrain run that may die of the injected fault (its exception is the fault's, not a test's)."""
    try:
        return retrain(**parameters)
    except Exception as error:  # whatever botocore raises for a dead endpoint
        return error


@pytest.mark.parametrize(
    "killed_after",
    ["quarantine/", "datasets/", "state/manifest.json"],
    ids=["quarantine", "curate", "manifest"],
)
def test_s3_killed_mid_ingest_and_restarted_loses_and_doubles_no_row(
    chaos_store, s3_server, monkeypatch, killed_after
):
    expected = drop_batch(chaos_store, "a.csv", 150, seed=1, bad_rows=1)
    expected |= drop_batch(chaos_store, "b.csv", 90, seed=2)
    killed = _kill_server_after_put(monkeypatch, s3_server, killed_after)

    first = _run_surviving_faults(training=QUICK)
    assert killed.is_set()
    _await_restarts()
    second = retrain(training=QUICK)

    assert "promoted" in {getattr(first, "status", None), second.status}, (first, second)
    assert assert_consistent(chaos_store) == expected  # every good row once, the bad row not
    rejected = [info.key for info in chaos_store.list_objects("quarantine/") if info.key.endswith(".csv")]
    assert rejected, "the bad row is quarantined"


def test_s3_killed_mid_publish_keeps_the_champion_and_the_next_run_publishes_a_complete_version(
    chaos_store, s3_server, monkeypatch
):
    drop_batch(chaos_store, "a.csv", 150, seed=1)
    champion = retrain(training=QUICK).production_version
    drop_batch(chaos_store, "b.csv", 90, seed=2)
    killed = _kill_server_after_put(monkeypatch, s3_server, "models/m-")  # the new version's first file
    force = {"training": QUICK, "force": True, "force_reason": "chaos: the publish path"}

    interrupted = _run_surviving_faults(**force)

    assert killed.is_set() and isinstance(interrupted, Exception)
    _await_restarts()
    assert read_production_pointer(chaos_store)[0].version == champion
    assert [row.version for row in list_versions(chaos_store)] == [champion]
    outcome = retrain(**force)
    assert outcome.status == "forced" and outcome.production_version != champion
    assert_consistent(chaos_store)


def _retrain_process(die_before_smoke_test: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.retrain_process"]
    if die_before_smoke_test:
        command.append("--die-before-smoke-test")  # it forces the promotion, so it reaches the publish
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.Popen(
        command, cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigkill_between_publish_and_flip_leaves_the_champion_serving_and_an_unservable_version(
    chaos_store,
):
    drop_batch(chaos_store, "a.csv", 150, seed=1)
    champion = retrain(training=QUICK).production_version
    drop_batch(chaos_store, "b.csv", 90, seed=2)

    killed = _retrain_process(die_before_smoke_test=True)
    output, _ = killed.communicate(timeout=600)

    assert killed.returncode == -9, output
    assert read_production_pointer(chaos_store)[0].version == champion
    [orphan] = [
        info.key.split("/")[1]
        for info in chaos_store.list_objects("models/m-")
        if info.key.endswith("/metrics.json") and champion not in info.key
    ]
    with pytest.raises(ValueError, match="smoke test"):
        rollback(chaos_store, "chaos", to_version=orphan)
    assert read_production_pointer(chaos_store)[0].version == champion
    assert retrain(training=QUICK).status in {"promoted", "kept"}  # the next run decides as usual
    assert_consistent(chaos_store)


def test_two_runs_at_once_curate_each_row_once_and_flip_the_pointer_from_one_state_once(chaos_store):
    expected = drop_batch(chaos_store, "a.csv", 150, seed=1) | drop_batch(chaos_store, "b.csv", 90, seed=2)

    runs = [_retrain_process() for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]

    statuses = sorted(output.strip().splitlines()[-1] for output in outputs)
    assert any(status == "status: promoted" for status in statuses), outputs
    assert assert_consistent(chaos_store) == expected
    promotions_from_nothing = [
        record
        for record in read_history(chaos_store)
        if record.action == "promoted" and record.previous_version is None
    ]
    assert len(promotions_from_nothing) == 1


@pytest.mark.parametrize("round_", range(5))
def test_two_rollbacks_at_once_exactly_one_wins(store, tmp_path, round_):
    for version, previous in (("m-1", None), ("m-2", "m-1")):
        publish_fake_version(store, tmp_path, version)
        promote(store, version, previous)
    start = threading.Barrier(2)
    results: list[str] = []

    def roll_back(name: str) -> None:
        start.wait()
        try:
            rollback(store, f"operator {name}", to_version="m-1")
            results.append("won")
        except (PreconditionFailedError, ValueError) as error:  # lost the CAS, or saw m-1 already serving
            results.append(f"lost: {error}")

    threads = [threading.Thread(target=roll_back, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results)[-1] == "won" and sorted(results)[0].startswith("lost"), results
    assert read_production_pointer(store)[0].version == "m-1"
    assert [record.action for record in read_history(store)].count("rolled-back") == 1
    assert_consistent(store)
