"""The hand-off of fine-tuning to a deployment fails fast and loudly when no worker can take it.

Against a real Prefect API (the session's `prefect_api` server): deployments in work pools of their own
(so no other test's worker or pool is seen), a real `prefect worker start` where one is needed.
"""

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType, WorkerStatus
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import failed_record, retrain
from tasks.handoff import (
    FineTuneNotStartedError,
    FineTuneTimeoutError,
    hand_off_fine_tune,
    warn_if_a_worker_waits_unused,
)
from tests.conftest import wait_for
from tests.prefect_server import stop_worker

ROOT = Path(__file__).resolve().parents[1]
IN_THE_CHECKOUT = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
START_TIMEOUT_S = 5
PROCESS_WITH_ROOM_FOR_ONE = ["--type", "process", "--limit", "1"]


def _deploy(pool: str, flow_name: str, entrypoint: str) -> str:
    """A deployment of `entrypoint` in a new process work pool `pool`; its ``flow/deployment`` name."""
    name = f"handoff-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.create_deployment(
            flow_id=client.create_flow_from_name(flow_name),
            name=name,
            work_pool_name=pool,
            entrypoint=entrypoint,
            pull_steps=IN_THE_CHECKOUT,
        )
    return f"{flow_name}/{name}"


def _runs_of(deployment: str) -> list:
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def _run_warnings(flow_run_id: str, containing: str, wait_s: float = 20) -> list:
    """The run's warnings that contain `containing` (logs reach the API in batches: wait for them)."""
    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
        found = [log for log in logs if log.level == logging.WARNING and containing in log.message]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_with_no_live_worker_the_retrain_run_warns_at_once_then_fails_and_cancels_the_fine_tune_run(
    flow_store_env, monkeypatch
):
    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    deployment = _deploy(pool, "fine-tune", "flows/fine_tune.py:fine_tune_flow")
    monkeypatch.setenv("RETRAINER_FINE_TUNE_DEPLOYMENT", deployment)
    monkeypatch.setenv("RETRAINER_FINE_TUNE_START_TIMEOUT_S", str(START_TIMEOUT_S))
    monkeypatch.setenv("RETRAINER_FINE_TUNE_TIMEOUT_S", "60")  # the old code waits this long, then fails
    flow_store_env.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(150, seed=1)))

    with pytest.raises(Exception) as raised:
        retrain()

    message = str(raised.value)
    [fine_tune_run] = _runs_of(deployment)
    assert f"no worker picked up fine-tune run '{fine_tune_run.name}' in work pool '{pool}'" in message
    assert f"within {START_TIMEOUT_S} s" in message
    assert f"retrainer worker --pool {pool}" in message and "RETRAINER_FINE_TUNE_DEPLOYMENT" in message
    assert isinstance(raised.value, FineTuneNotStartedError)
    # Cancelled, so that a worker that comes up later does not train for a run that has given up.
    assert fine_tune_run.state.type == StateType.CANCELLED
    waited_s = (fine_tune_run.state.timestamp - fine_tune_run.created).total_seconds()
    assert START_TIMEOUT_S <= waited_s <= START_TIMEOUT_S + 5
    retrain_run_id = failed_record(raised.value).run_id
    [warning] = _run_warnings(retrain_run_id, f"no live worker in work pool '{pool}'")
    assert deployment in warning.message and f"waiting up to {START_TIMEOUT_S} s" in warning.message
    assert (warning.timestamp - fine_tune_run.created).total_seconds() < 15  # at once, not after the wait


@pytest.fixture(scope="module")
def sleeper_worker(prefect_api):
    """A real process worker with room for one run, in a pool of its own, online; the stand-in
    fine-tune deployment's name (its runs sleep for their `seconds` parameter)."""
    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    deployment = _deploy(pool, "handoff-sleeper", "tests/handoff_flows.py:sleeper")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, *PROCESS_WITH_ROOM_FOR_ONE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _live_workers(pool) == 1, f"a live worker in work pool {pool!r}", 60)
        yield deployment
    finally:
        stop_worker(worker)


@pytest.fixture
def busy_worker(sleeper_worker):
    """The worker, busy for 6 s with a run of the stand-in deployment: a run handed off now waits."""
    blocker = run_deployment(sleeper_worker, parameters={"seconds": 6}, timeout=0)
    wait_for(lambda: _read_run(blocker.id).state.type == StateType.RUNNING, "the blocker run to start", 60)
    yield sleeper_worker
    wait_for(lambda: _read_run(blocker.id).state.is_final(), "the blocker run to end", 60)


def _live_workers(pool: str) -> int:
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return sum(worker.status == WorkerStatus.ONLINE for worker in workers)


def _read_run(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def test_a_live_but_busy_worker_keeps_the_hand_off_waiting_past_the_start_timeout(busy_worker, caplog):
    caplog.set_level(logging.INFO, logger="retrainer")
    start_timeout_s = 2

    run = hand_off_fine_tune(busy_worker, {"seconds": 0}, start_timeout_s=start_timeout_s, timeout_s=120)

    assert run.state.type == StateType.COMPLETED
    waited_for_the_worker_s = (run.start_time - run.created).total_seconds()
    assert waited_for_the_worker_s > start_timeout_s  # not cancelled: the pool's worker was live
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_fine_tune_run_that_fails_fails_the_hand_off(sleeper_worker):
    with pytest.raises(RuntimeError, match=r"fine-tune run '.+' ended Failed"):
        hand_off_fine_tune(sleeper_worker, {"seconds": "not a number"}, start_timeout_s=60, timeout_s=120)


def test_a_fine_tune_run_still_running_at_the_fine_tune_timeout_is_cancelled_and_fails_the_hand_off(
    sleeper_worker,
):
    with pytest.raises(FineTuneTimeoutError, match=r"did not end within 20 s") as raised:
        hand_off_fine_tune(sleeper_worker, {"seconds": 120}, start_timeout_s=60, timeout_s=20)

    [run] = [run for run in _runs_of(sleeper_worker) if run.name in str(raised.value)]
    assert run.start_time is not None  # it ran: its worker is the one that stops it
    wait_for(lambda: _read_run(run.id).state.type == StateType.CANCELLED, "the worker to cancel it", 60)


def test_training_in_process_beside_a_live_gpu_worker_is_warned_about_and_a_missing_pool_is_no_error(
    prefect_api, caplog
):
    caplog.set_level(logging.INFO, logger="retrainer")
    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        assert not warn_if_a_worker_waits_unused(pool)  # a pool without workers: nothing to say
        client.send_worker_heartbeat(pool, "gpu-box-1", heartbeat_interval_seconds=30)  # as a worker does

    assert warn_if_a_worker_waits_unused(pool)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"work pool '{pool}' has a live worker" in warning.getMessage()
    assert "RETRAINER_FINE_TUNE_DEPLOYMENT=fine-tune/fine-tune" in warning.getMessage()
    assert not warn_if_a_worker_waits_unused(f"no-such-pool-{uuid.uuid4().hex[:8]}")  # no error either
