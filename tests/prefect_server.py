"""A real `prefect server start` on 127.0.0.1 for tests of automations (and later deployments)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from retrainer.seaweed import free_ports


class PrefectServer:
    """Runs the Prefect API + UI in a subprocess with its own SQLite database; stopped by PID."""

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
