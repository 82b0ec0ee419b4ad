"""A Prefect process worker that stops gracefully and within a bound (``retrainer worker``).

``prefect worker start`` (3.9) answers SIGTERM with a SIGINT to itself, keeps polling and can take a new
flow run just before docker's stop grace runs out and kills it mid-run. This worker, on the first SIGTERM
or SIGINT:

1. takes no new flow runs (they stay Scheduled for the pool's other workers, or this one's restart),
   while its health check stays green;
2. waits up to ``drain_s`` seconds for the flow runs in flight to finish;
3. then, or at once on a second signal, sends SIGTERM to their process groups (Prefect's engine marks
   each run Crashed), SIGKILL to what is left after ``kill_grace_s`` (at once on a third signal), sets
   Crashed on any of its runs the API still shows as unfinished (none is left Running), and returns;
   the command exits 0.

Prefect internals relied on (Prefect 3.9; check them on an upgrade):
``BaseWorker._last_polled_time`` (what the health check reads), ``BaseWorker._get_scheduled_flow_runs``
(the poll's query, awaited before runs are claimed), ``BaseWorker._submitting_flow_run_ids`` (runs
claimed but not yet started) and ``ProcessWorker.run`` reporting the flow-run process's PID through
``task_status.started`` (as the base worker uses it for ``infrastructure_pid``).
"""

import datetime
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_logger
from prefect.states import Crashed
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

DEFAULT_DRAIN_S = 600
KILL_GRACE_S = 20.0
"""How long flow-run processes get after SIGTERM (Prefect's engine reports Crashed) before SIGKILL."""
_REPORT_GRACE_S = 5.0  # for a killed run's executor to record its exit before the safety net looks
_API_GRACE_S = 10.0  # bounds the safety net's API calls
_POLL_S = 0.2

logger = get_logger("app.worker")


class DrainingProcessWorker(ProcessWorker):
    """A `ProcessWorker` that can stop taking flow runs and knows its flow-run processes."""

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Registered under its own key, so Prefect's "process" worker type stays ProcessWorker.
        return "retrainer-draining-process"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self._flow_run_pids: dict[UUID, int] = {}

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if self.draining:
            # Still alive: the health check (it reads the last poll time) stays green while draining.
            self._last_polled_time = datetime.datetime.now(datetime.UTC)
            return []
        return await super().get_and_submit_flow_runs()

    async def _get_scheduled_flow_runs(self) -> list:
        runs = await super()._get_scheduled_flow_runs()
        # A poll that was under way when the stop came must not claim what it found: nothing awaits
        # between this and the claim, so no run is taken once `draining` is set.
        return [] if self.draining else runs

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run the flow run's process as `ProcessWorker` does, remembering its PID while it runs."""
        caller = task_status or anyio.TASK_STATUS_IGNORED

        def started(pid: int) -> None:
            self._flow_run_pids[flow_run.id] = pid
            caller.started(pid)

        try:
            return await super().run(flow_run, configuration, task_status=_OnStarted(started))
        finally:
            self._flow_run_pids.pop(flow_run.id, None)

    def in_flight(self) -> set[UUID]:
        """Flow runs claimed by this worker whose process has not ended (or not yet started)."""
        return set(self._submitting_flow_run_ids) | set(self._flow_run_pids)

    def flow_run_pids(self) -> list[int]:
        """PIDs of the flow-run processes running now."""
        return list(self._flow_run_pids.values())


class _OnStarted:
    """A task status that hands the started value to a callback."""

    def __init__(self, callback: Callable[[int], None]) -> None:
        self._callback = callback

    def started(self, value: int) -> None:
        self._callback(value)


class _StopRequests:
    """Counts SIGTERM and SIGINT received since the worker started."""

    def __init__(self) -> None:
        self.count = 0

    async def listen(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.count += 1
                logger.info("Received %s (stop request %d)", signal.Signals(signum).name, self.count)


async def serve(
    pool: str,
    *,
    limit: int | None = None,
    name: str | None = None,
    with_healthcheck: bool = False,
    drain_s: float = DEFAULT_DRAIN_S,
    kill_grace_s: float = KILL_GRACE_S,
) -> None:
    """Run a process worker for `pool` until SIGTERM or SIGINT, then drain it and return (see module)."""
    worker = DrainingProcessWorker(work_pool_name=pool, name=name, limit=limit)
    requests = _StopRequests()
    async with anyio.create_task_group() as services:
        await services.start(requests.listen)
        services.start_soon(partial(worker.start, with_healthcheck=with_healthcheck, printer=logger.info))
        await _wait_until(lambda: requests.count > 0, timeout_s=None)
        await _drain(worker, requests, drain_s, kill_grace_s)
        services.cancel_scope.cancel()  # stops the polling and heartbeat loops; teardown follows
    logger.info("Worker %r stopped", worker.name)


async def _drain(worker: DrainingProcessWorker, requests: _StopRequests, drain_s: float, kill_grace_s: float):
    worker.draining = True
    claimed = worker.in_flight()
    logger.info(
        "Stopping: taking no new flow runs; waiting up to %g s for %d flow run(s) in flight to finish,"
        " then SIGTERM (their runs end Crashed), SIGKILL after %g s",
        drain_s,
        len(claimed),
        kill_grace_s,
    )

    def drained() -> bool:
        claimed.update(worker.in_flight())
        return not worker.in_flight()

    if await _wait_until(drained, drain_s, give_up=lambda: requests.count > 1):
        return
    await _terminate(worker, requests, kill_grace_s)
    await _wait_until(drained, _REPORT_GRACE_S)
    with anyio.move_on_after(_API_GRACE_S):
        await _crash_unfinished(worker, claimed)


async def _terminate(worker: DrainingProcessWorker, requests: _StopRequests, grace_s: float) -> None:
    """SIGTERM every flow-run process (also ones that start meanwhile), SIGKILL them after `grace_s`."""
    logger.warning("Sending SIGTERM to %d flow-run process(es)", len(worker.flow_run_pids()))
    signalled: set[int] = set()

    def ended() -> bool:
        for pid in set(worker.flow_run_pids()) - signalled:
            _signal_process_group(pid, signal.SIGTERM)
            signalled.add(pid)
        return not worker.in_flight()

    stop_requests = requests.count
    if await _wait_until(ended, grace_s, give_up=lambda: requests.count > stop_requests):
        return
    left = worker.flow_run_pids()
    logger.warning("Sending SIGKILL to %d flow-run process(es) still running", len(left))
    for pid in left:
        _signal_process_group(pid, signal.SIGKILL)


def _signal_process_group(pid: int, signum: int) -> None:
    """Signal the flow run's process group (Prefect starts it in its own session, so training's child
    processes go too); a process that shares this worker's group is signalled alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has just ended


async def _crash_unfinished(worker: DrainingProcessWorker, flow_run_ids: set[UUID]) -> None:
    """Set Crashed on each of these runs the API does not show as finished: their process is gone."""
    for flow_run_id in flow_run_ids:
        flow_run = await worker.client.read_flow_run(flow_run_id)
        if flow_run.state is None or not flow_run.state.is_final():
            message = f"Worker {worker.name!r} stopped before the run ended"
            await worker.client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            logger.warning("Flow run %s was %s; set Crashed", flow_run_id, flow_run.state_name)


async def _wait_until(
    condition: Callable[[], bool], timeout_s: float | None, give_up: Callable[[], bool] = lambda: False
) -> bool:
    """Poll `condition` until it holds (True), `timeout_s` passes or `give_up` holds (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not condition():
        if give_up() or (deadline is not None and time.monotonic() >= deadline):
            return False
        await anyio.sleep(_POLL_S)
    return True


def run_worker(pool: str, **options: Any) -> None:
    """`serve` on an event loop: blocks until the worker has stopped."""
    anyio.run(partial(serve, pool, **options))
