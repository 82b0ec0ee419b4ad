"""Handing fine-tuning to a deployment (the ``gpu`` work pool), watched so that it fails fast and loudly.

``run_deployment`` alone waits out the whole fine-tune timeout (6 h) when no worker serves the
deployment's work pool: the fine-tune run stays Scheduled/Late, the retrain run holds its one-run
concurrency slot, and no log line says why. Here the retrain run watches the pool while the fine-tune
run waits to start: it warns at once when no worker can take the run, and after
``fine_tune_start_timeout_s`` without one it cancels the fine-tune run (so that a worker coming up later
does not train for nobody) and fails. A live but busy worker is waited for, up to the fine-tune timeout.
"""

import time

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from tasks.common import once_task, run_logger

GPU_POOL = "gpu"
"""The work pool that `retrainer setup` creates for fine-tuning."""
POLL_S = 5.0
"""How often the fine-tune run (and, while it waits to start, its pool's workers) is checked."""
PROGRESS_LOG_S = 300.0
"""How often a run that waits for a busy worker says so."""
_NOT_STARTED = {StateType.SCHEDULED, StateType.PENDING}  # Late and AwaitingRetry are Scheduled states


class FineTuneNotStartedError(RuntimeError):
    """No worker of the deployment's work pool took the fine-tune run within the start timeout."""


class FineTuneTimeoutError(RuntimeError):
    """The fine-tune run did not end within the fine-tune timeout."""


def hand_off_fine_tune(
    deployment: str, parameters: dict, start_timeout_s: float, timeout_s: float, poll_s: float = POLL_S
) -> FlowRun:
    """Run `deployment` with `parameters` and wait for it; the Completed flow run.

    Raises FineTuneNotStartedError when, for `start_timeout_s`, the run waits to start and no worker
    of its pool is live (the run is cancelled); FineTuneTimeoutError when it has not ended after
    `timeout_s` (cancelled too); RuntimeError when it ends in any state but Completed.
    """
    run = run_deployment(deployment, parameters=parameters, timeout=0)  # a subflow of the calling run
    run_logger().info(
        "handed fine-tuning to run '%s' of deployment '%s' in work pool '%s'",
        run.name,
        deployment,
        run.work_pool_name,
    )
    with get_client(sync_client=True) as client:
        watch = _Watch(client, deployment, run, start_timeout_s, timeout_s)
        while (final := watch.check()) is None:
            time.sleep(watch.seconds_to_next_check(poll_s))
    if not final.state or not final.state.is_completed():
        raise RuntimeError(
            f"fine-tune run '{final.name}' ended {final.state.name if final.state else 'unknown'}"
        )
    return final


def why_no_worker_can_take_runs(client: SyncPrefectClient, pool: str) -> str | None:
    """Why no worker of `pool` can take a flow run now (none live, pool paused or missing); None if one can.

    A worker is live while the server has its heartbeat from the last three heartbeat intervals (the
    server reports it ONLINE); a live worker may still be busy.
    """
    try:
        if client.read_work_pool(pool).is_paused:
            return f"work pool '{pool}' is paused"
        workers = client.read_workers_for_work_pool(pool)
    except ObjectNotFound:
        return f"work pool '{pool}' does not exist"
    if not any(worker.status == WorkerStatus.ONLINE for worker in workers):
        return f"no live worker in work pool '{pool}'"
    return None


def warn_if_a_worker_waits_unused(pool: str = GPU_POOL) -> bool:
    """Warn when fine-tuning runs in this process although `pool` has a live worker; whether it warned.

    For a retrain run without RETRAINER_FINE_TUNE_DEPLOYMENT. One API call; never fails the run.
    """
    try:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(pool)
    except Exception as error:  # advisory only: no such pool (404) or an API hiccup must not fail a run
        run_logger().debug("did not check work pool %r for live workers: %s", pool, error)
        return False
    live = sorted(worker.name for worker in workers if worker.status == WorkerStatus.ONLINE)
    if not live:
        return False
    run_logger().warning(
        "fine-tuning runs in this process, although work pool '%s' has a live worker (%s); to train "
        "there, set RETRAINER_FINE_TUNE_DEPLOYMENT=fine-tune/fine-tune for the retrain runs",
        pool,
        ", ".join(live),
    )
    return True


class _Watch:
    """The state of one handed-off fine-tune run between checks, and the deadlines that apply to it."""

    def __init__(
        self,
        client: SyncPrefectClient,
        deployment: str,
        run: FlowRun,
        start_timeout_s: float,
        timeout_s: float,
    ) -> None:
        self.client, self.deployment, self.run = client, deployment, run
        self.start_timeout_s, self.timeout_s = start_timeout_s, timeout_s
        self.started_at = self.last_report_at = time.monotonic()
        self.stranded_since: float | None = None  # since when the run has waited with no worker to take it
        self.last_state_name: str | None = None

    def check(self) -> FlowRun | None:
        """Read the run once: the run when it has ended, else None; raises when a deadline has passed."""
        self.run = self.client.read_flow_run(self.run.id)
        state = self.run.state
        if state and state.is_final():
            return self.run
        self._log_state_change()
        now = time.monotonic()
        if now - self.started_at >= self.timeout_s:
            message = f"fine-tune run '{self.run.name}' did not end within {self.timeout_s:g} s"
            self._cancel(message, Cancelling)  # its worker stops the process, then marks it Cancelled
            raise FineTuneTimeoutError(f"{message} (RETRAINER_FINE_TUNE_TIMEOUT_S); cancelled it")
        waiting = state is None or state.type in _NOT_STARTED
        if waiting and self.run.work_pool_name:  # a served deployment (no pool): only the timeout above
            self._check_workers(now)
        else:
            self.stranded_since = None
        return None

    def seconds_to_next_check(self, poll_s: float) -> float:
        """`poll_s`, or less when a deadline comes sooner (so a timeout is met to the second)."""
        deadlines = [self.started_at + self.timeout_s]
        if self.stranded_since is not None:
            deadlines.append(self.stranded_since + self.start_timeout_s)
        return max(0.0, min(poll_s, min(deadlines) - time.monotonic()))

    def _check_workers(self, now: float) -> None:
        pool = self.run.work_pool_name
        reason = why_no_worker_can_take_runs(self.client, pool)
        if reason is None:
            if self.stranded_since is not None:
                run_logger().info("work pool '%s' has a live worker again", pool)
            self.stranded_since = None
            if now - self.last_report_at >= PROGRESS_LOG_S:
                self.last_report_at = now
                run_logger().info(
                    "fine-tune run '%s' still waits for a busy worker of work pool '%s' (%.0f s so far, "
                    "at most %g s: RETRAINER_FINE_TUNE_TIMEOUT_S)",
                    self.run.name,
                    pool,
                    now - self.started_at,
                    self.timeout_s,
                )
            return
        if self.stranded_since is None:
            self.stranded_since = now
            run_logger().warning(
                "%s: fine-tune run '%s' of deployment '%s' cannot start; waiting up to %g s for one "
                "(RETRAINER_FINE_TUNE_START_TIMEOUT_S), then it is cancelled and this run fails. %s",
                reason,
                self.run.name,
                self.deployment,
                self.start_timeout_s,
                _remedy(pool, reason),
            )
        elif now - self.stranded_since >= self.start_timeout_s:
            message = (
                f"no worker picked up fine-tune run '{self.run.name}' in work pool '{pool}' within "
                f"{self.start_timeout_s:g} s ({reason})"
            )
            self._cancel(message, Cancelled)  # no worker holds it: nothing to stop
            raise FineTuneNotStartedError(f"{message}; cancelled it. {_remedy(pool, reason)}")

    def _cancel(self, message: str, state: type[Cancelled] | type[Cancelling]) -> None:
        result = self.client.set_flow_run_state(self.run.id, state(message=message))
        now = result.state.name if result.state else result.status.value
        run_logger().info("cancelled fine-tune run '%s' (now %s)", self.run.name, now)

    def _log_state_change(self) -> None:
        name = self.run.state.name if self.run.state else None
        if name != self.last_state_name and self.last_state_name is not None:
            run_logger().info("fine-tune run '%s' is %s", self.run.name, name)
        self.last_state_name = name


def _remedy(pool: str, reason: str) -> str:
    if reason.endswith("is paused"):
        return f"Resume it (`prefect work-pool resume {pool}`) or unset RETRAINER_FINE_TUNE_DEPLOYMENT."
    return (
        f"Start a worker (`retrainer worker --pool {pool}`) or unset RETRAINER_FINE_TUNE_DEPLOYMENT "
        "to train in the retrain run."
    )


hand_off_fine_tune_task = once_task(hand_off_fine_tune, "hand-off-fine-tune")
