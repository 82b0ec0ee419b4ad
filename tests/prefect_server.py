"""A real `prefect server start` on 127.0.0.1 for tests of automations (and later deployments)."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from app.seaweed import free_ports


class PrefectServer:
    """Runs the Prefect API + UI in a subprocess with its own SQLite database; stopped by PID."""

    auth: str | None = None  # "user:password" of a server started with basic auth

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_ports(("api",))["api"]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        """The environment of a process that should talk to this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def api(self, path: str, body: object | None = None, method: str = "POST") -> object:
        """Call the server's REST API (`path` under /api); the decoded JSON answer, or None."""
        headers = {"Content-Type": "application/json"}
        if self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        data = None if method == "GET" else json.dumps(body if body is not None else {}).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        for attempt in range(20):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    text = response.read()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as error:
                # 503: SQLite was busy (a loaded box); Prefect's own client retries it too.
                if error.code != 503 or attempt == 19:
                    raise
                time.sleep(0.5)

    def describe_flow_runs(self, log_lines: int = 40) -> str:
        """Every flow run's name, state and parent, and the newest log lines: why a wait timed out."""
        runs = self.api("/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
        lines = [
            f"{run['name']} ({run['id']}): {run['state_name']}, parent task run {run['parent_task_run_id']}"
            for run in runs
        ]
        logs = self.api("/logs/filter", {"sort": "TIMESTAMP_DESC", "limit": log_lines})
        lines += [f"{log['timestamp']} {log['name']}: {log['message']}" for log in reversed(logs)]
        return "\n".join(lines)

    def __enter__(self) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {key: value for key, value in self.environment().items() if key != "PREFECT_API_URL"}
        env["PREFECT_UI_API_URL"] = self.api_url  # the UI in a browser must call this port, not 4200
        log = (self.home / "server.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError("prefect server did not become healthy in 90 s")

    def __exit__(self, *exc_info) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for _ in range(2):  # uvicorn wants a second SIGTERM when it has open connections
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
                return
            except subprocess.TimeoutExpired:
                continue
        self.process.kill()
        self.process.wait(10)


def stop_worker(worker: subprocess.Popen) -> None:
    """Stop a `prefect worker start` process group: it needs a second SIGTERM, then SIGKILL."""
    for _ in range(2):
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(5)
            except subprocess.TimeoutExpired:
                continue
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
