"""`retrainer worker` on SIGTERM: takes no new runs, drains those in flight within a bound, exits 0.

Against a real `prefect server start`; the worker and its flow-run processes are real subprocesses. The
deployment runs tests/worker_stop_flow.py, which marks when it starts and when it finishes.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from app.seaweed import free_ports
from app.worker import KILL_GRACE_S
from tests.conftest import wait_for
from tests.prefect_server import PrefectServer, stop_worker

pytestmark = pytest.mark.prefect  # a `prefect server start` of its own (one test checks its absence)
ROOT = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with PrefectServer(tmp_path_factory.mktemp("prefect")) as prefect_server:
        yield prefect_server


class Pool:
    """A fresh process work pool with a deployment of `sleep_then_mark`, and its worker subprocess."""

    def __init__(self, server: PrefectServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.name = f"stop-{uuid.uuid4().hex[:8]}"
        self.worker: subprocess.Popen | None = None
        self.log = tmp_path / "worker.log"
        self.health_port = free_ports(("health",))["health"]
        server.api("/work_pools/", {"name": self.name, "type": "process"})
        flow = server.api("/flows/", {"name": "sleep-then-mark"})
        self.deployment = server.api(
            "/deployments/",
            {
                "name": self.name,
                "flow_id": flow["id"],
                "work_pool_name": self.name,
                "entrypoint": "tests/worker_stop_flow.py:sleep_then_mark",
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
                "enforce_parameter_schema": False,
            },
        )

    def start_worker(self, *options: str, env: dict[str, str] | None = None) -> None:
        env = {
            **self.server.environment(),
            **(env or {}),
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll often, so a run taken while draining would show
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(self.health_port),
        }
        command = [sys.executable, "-m", "app.cli", "worker", "--pool", self.name, *options]
        with self.log.open("wb") as log:
            self.worker = subprocess.Popen(
                command,
                cwd=self.tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_log("started!", timeout_s=60)

    def create_run(self, seconds: float, ignore_sigterm: bool = False) -> tuple[str, Path]:
        marker = self.tmp_path / f"run-{uuid.uuid4().hex[:8]}"
        parameters = {"seconds": seconds, "marker": str(marker), "ignore_sigterm": ignore_sigterm}
        run = self.server.api(
            f"/deployments/{self.deployment['id']}/create_flow_run",
            {"parameters": parameters},
        )
        return run["id"], marker

    def run_state(self, run_id: str) -> dict:
        return self.server.api(f"/flow_runs/{run_id}", method="GET")["state"]

    def process_alive(self, run_id: str) -> bool:
        """Whether the flow run's process group (the worker records its PID on the run) still exists."""
        pid = int(self.server.api(f"/flow_runs/{run_id}", method="GET")["infrastructure_pid"])
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_until(self, check, what: str, timeout_s: float) -> None:
        """Wait for `check` while the worker lives; the worker's log when `what` does not come."""
        try:
            wait_for(check, what, timeout_s, self.worker)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"{error}:\n{self.log_tail()}") from None

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        self.wait_until(
            lambda: text in self.log.read_text(errors="replace"), f"{text!r} in its log", timeout_s
        )

    def wait_for_start(self, marker: Path) -> None:
        """Wait until the run given `marker` (`create_run`) has started."""
        self.wait_until(Path(f"{marker}.started").exists, f"{marker}.started written", 60)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> float:
        """SIGTERM the worker (as `docker stop` does: to it alone); the time it was sent."""
        self.worker.send_signal(signal.SIGTERM)
        return time.monotonic()

    def stop_and_wait(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM the worker (`stop`) and wait for it to exit: its return code and the seconds it took."""
        signalled_at = self.stop()
        returncode = self.worker.wait(timeout_s)
        return returncode, time.monotonic() - signalled_at

    def health(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/health", timeout=5) as response:
            return response.status

    def clean_up(self) -> None:
        """Stop the worker and any flow-run process left behind by a failed test."""
        if self.worker is not None:
            stop_worker(self.worker)
        runs = self.server.api("/flow_runs/filter", {"work_pools": {"name": {"any_": [self.name]}}})
        for run in runs:
            if run["state_type"] not in FINAL and run.get("infrastructure_pid"):
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int(run["infrastructure_pid"]), signal.SIGKILL)


@pytest.fixture
def pool(server, tmp_path):
    work_pool = Pool(server, tmp_path)
    yield work_pool
    work_pool.clean_up()


def test_sigterm_lets_the_run_in_flight_complete_takes_no_new_run_and_exits_0(pool):
    # --limit 2: room for the second run, so only the drain keeps this worker from taking it.
    pool.start_worker("--drain-seconds", "60", "--with-healthcheck", "--limit", "2", "--name", "drain-test")
    first, marker = pool.create_run(seconds=6)
    pool.wait_for_start(marker)

    pool.stop()
    pool.wait_for_log("waiting up to 60 s for 1 flow run(s) in flight", timeout_s=10)
    second, second_marker = pool.create_run(seconds=0)  # polled every second while the first one drains
    assert pool.health() == 200  # still serving, and green, while draining
    returncode = pool.worker.wait(60)

    assert returncode == 0, pool.log_tail()
    assert marker.exists()  # the worker exited after its run finished
    assert pool.run_state(first)["type"] == "COMPLETED"
    assert pool.run_state(second)["type"] == "SCHEDULED"  # left for another worker
    assert not Path(f"{second_marker}.started").exists()
    assert "Worker 'drain-test' stopped" in pool.log_tail()


def test_sigterm_with_a_short_drain_stops_the_run_in_flight_which_ends_crashed(pool):
    pool.start_worker("--drain-seconds", "3")
    run, marker = pool.create_run(seconds=300)
    pool.wait_for_start(marker)

    returncode, took_s = pool.stop_and_wait(60)

    assert returncode == 0, pool.log_tail()
    assert 3 <= took_s < 3 + KILL_GRACE_S, f"exited {took_s:.1f} s after SIGTERM:\n{pool.log_tail()}"
    state = pool.run_state(run)
    assert state["type"] == "CRASHED", state
    assert not marker.exists() and not pool.process_alive(run)


def test_a_second_sigterm_stops_the_run_in_flight_without_waiting_for_the_drain(pool):
    pool.start_worker("--drain-seconds", "600")
    run, marker = pool.create_run(seconds=300)
    pool.wait_for_start(marker)

    pool.stop()
    pool.wait_for_log("waiting up to 600 s", timeout_s=10)
    returncode, took_s = pool.stop_and_wait(60)

    assert returncode == 0, pool.log_tail()
    assert took_s < KILL_GRACE_S, f"exited {took_s:.1f} s after the second SIGTERM:\n{pool.log_tail()}"
    assert pool.run_state(run)["type"] == "CRASHED"


def test_a_third_sigterm_kills_a_run_that_ignores_sigterm_which_ends_crashed(pool):
    pool.start_worker("--drain-seconds", "600")
    run, marker = pool.create_run(seconds=300, ignore_sigterm=True)
    pool.wait_for_start(marker)

    pool.stop()
    pool.wait_for_log("waiting up to 600 s", timeout_s=10)
    pool.stop()
    pool.wait_for_log("Sending SIGTERM to 1 flow-run process", timeout_s=10)
    time.sleep(1)
    assert pool.worker.poll() is None and pool.process_alive(run)  # SIGTERM alone did not stop it
    returncode, took_s = pool.stop_and_wait(60)

    assert returncode == 0, pool.log_tail()
    assert took_s < 10, f"exited {took_s:.1f} s after the third SIGTERM:\n{pool.log_tail()}"
    assert "Sending SIGKILL to 1 flow-run process" in pool.log_tail()
    assert pool.run_state(run)["type"] == "CRASHED"
    assert not pool.process_alive(run)


def test_an_idle_worker_exits_0_within_seconds_of_sigterm(pool):
    pool.start_worker(env={"RETRAINER_WORKER_DRAIN_S": "45"})  # the default of --drain-seconds
    time.sleep(2)  # a few polls

    returncode, took_s = pool.stop_and_wait(30)

    assert returncode == 0, pool.log_tail()
    assert took_s < 5, f"exited {took_s:.1f} s after SIGTERM:\n{pool.log_tail()}"
    assert "waiting up to 45 s for 0 flow run(s) in flight" in pool.log_tail()


def test_the_worker_command_refuses_to_start_without_a_prefect_server(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--pool", "gpu"],
        env={**env, "PREFECT_HOME": str(tmp_path)},  # no profile with an API URL either
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "set PREFECT_API_URL" in done.stderr
