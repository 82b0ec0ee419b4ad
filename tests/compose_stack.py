"""The compose file's services started natively on 127.0.0.1, from the compose file itself.

Each service gets the command, environment and health check written in infra/docker-compose.yml and
the values of infra/.env.example (secrets filled in). Only what a container network provides is
rewritten: service host names and fixed ports become free loopback ports, container paths become
temporary directories. Anything else the compose file says reaches the native process unchanged, so
the file and the production-topology test cannot drift apart.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.seaweed import free_ports, weed_binary
from tests.compose import INFRA, read_compose, read_env_file, service_command, service_environment
from tests.conftest import wait_for

SECRETS = ("POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SERVE_TOKEN")
_GRPC = ("s3.grpc", "master.grpc", "volume.grpc", "filer.grpc")


def filled_env_file() -> dict[str, str]:
    """.env.example with its blank secrets filled in, as an operator would."""
    env = read_env_file()
    env.update({name: secrets.token_hex(12) for name in SECRETS})
    env["PREFECT_AUTH_STRING"] = f"operator:{secrets.token_hex(12)}"
    return env


def postgres_binaries(image: str) -> Path | None:
    """Debian's PostgreSQL of the image's major version (``postgres:15`` -> /usr/lib/postgresql/15/bin)."""
    major = image.split(":")[1].split(".")[0]
    found = Path(f"/usr/lib/postgresql/{major}/bin")
    return found if (found / "initdb").exists() else None


def run_healthcheck(test: list[str], env: dict[str, str], replacements: dict[str, str]) -> bool:
    """Run a compose `healthcheck.test` ([CMD, ...]) natively; True when it exits 0."""
    assert test[0] == "CMD", test
    command = [_replace_all(part, replacements) for part in test[1:]]
    if command[0] == "python":
        command[0] = sys.executable
    done = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def _replace_all(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _stop(process: subprocess.Popen | None, timeout_s: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@dataclass
class ComposeStack:
    """The five services of the compose file as native processes sharing one temporary root."""

    root: Path
    env_file: dict[str, str] = field(default_factory=filled_env_file)
    compose: dict[str, Any] = field(default_factory=read_compose)
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    pg_dir: Path | None = None

    def __post_init__(self) -> None:
        self.ports = free_ports(
            ("postgres", "prefect", "s3", "master", "volume", "filer", "cpu-health", "gpu-health", *_GRPC)
        )

    # --- what the container network provides ------------------------------------------------------

    @property
    def host_rewrites(self) -> dict[str, str]:
        """Compose service addresses -> the native processes' loopback addresses."""
        return {
            "prefect-server:4200": f"127.0.0.1:{self.ports['prefect']}",
            "seaweedfs:8333": f"127.0.0.1:{self.ports['s3']}",
            "@postgres:5432/": f"@127.0.0.1:{self.ports['postgres']}/",
        }

    def service(self, name: str) -> dict[str, Any]:
        return self.compose["services"][name]

    def environment(self, name: str) -> dict[str, str]:
        """What compose gives service `name`: its env_file (the .env) and its environment, with the
        service host names pointing at the native processes."""
        service = self.service(name)
        given = dict(self.env_file) if service.get("env_file") else {}
        given.update(service_environment(service, self.env_file))
        rewritten = {key: _replace_all(value, self.host_rewrites) for key, value in given.items()}
        leftover = [
            f"{k}={v}"
            for k, v in rewritten.items()
            if re.search(r"//(postgres|seaweedfs|prefect-server)\b", v)
        ]
        assert not leftover, f"{name}: a service address the native stack does not know: {leftover}"
        return rewritten

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def operator_environment(self) -> dict[str, str]:
        """The shell an operator runs setup and deploy from (infra/README.md): API URL and auth string,
        the S3 settings and credentials of the .env file."""
        settings = {
            key: value
            for key, value in self.environment("cpu-worker").items()
            if key.startswith("RETRAINER_")
        }
        return {
            **os.environ,
            **settings,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.env_file["PREFECT_AUTH_STRING"],
            "AWS_ACCESS_KEY_ID": self.env_file["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": self.env_file["AWS_SECRET_ACCESS_KEY"],
            "PREFECT_HOME": str(self.root / "operator"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def _popen(self, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None):
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command,
            env=env,
            cwd=cwd or self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self.processes[name]

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- postgres ---------------------------------------------------------------------------------

    def start_postgres(self, binaries: Path) -> None:
        """A PostgreSQL cluster with the image's user, password and database (as its entrypoint makes)."""
        env = self.environment("postgres")
        user, password, database = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
        # initdb refuses to run as root, and the server's directory must belong to its user.
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.pg_dir = Path(tempfile.mkdtemp(prefix="retrainer-pg-"))
        (self.pg_dir / "password").write_text(password)
        if as_user:
            shutil.chown(self.pg_dir, "postgres")
            shutil.chown(self.pg_dir / "password", "postgres")
        data = self.pg_dir / "data"
        run = [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", user, "-A", "scram-sha-256"]
        subprocess.run(
            [*run, f"--pwfile={self.pg_dir / 'password'}"], check=True, capture_output=True, timeout=120
        )
        options = f"-p {self.ports['postgres']} -k {self.pg_dir} -c listen_addresses=127.0.0.1"
        start = [
            *as_user,
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.pg_dir / "log"),
            "-o",
            options,
        ]
        subprocess.run([*start, "-w", "start"], check=True, capture_output=True, timeout=120)
        client_env = {**os.environ, "PGPASSWORD": password}
        server = ["-h", "127.0.0.1", "-p", str(self.ports["postgres"]), "-U", user]
        createdb = [str(binaries / "createdb"), *server, database]
        subprocess.run(createdb, check=True, capture_output=True, timeout=60, env=client_env)
        check = self.service("postgres")["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL" and "pg_isready" in check[1]
        ready = [str(binaries / "pg_isready"), *server, "-d", database]
        wait_for(lambda: subprocess.run(ready, capture_output=True).returncode == 0, "postgres", 30)

    def stop_postgres(self, binaries: Path) -> None:
        if self.pg_dir is None:
            return
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        stop = [*as_user, str(binaries / "pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "stop"]
        subprocess.run(stop, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.pg_dir, ignore_errors=True)

    # --- prefect-server -----------------------------------------------------------------------------

    def start_prefect_server(self) -> None:
        """`prefect server start` with the compose command and environment (PostgreSQL, basic auth)."""
        command = service_command(self.service("prefect-server"))
        assert command == ["prefect", "server", "start", "--host", "0.0.0.0"], command
        env = {
            **os.environ,
            **self.environment("prefect-server"),
            "PREFECT_HOME": str(self.root / "prefect-server"),
        }
        env.pop("PREFECT_API_URL", None)
        native = [sys.executable, "-m", *command[:-1], "127.0.0.1", "--port", str(self.ports["prefect"])]
        process = self._popen("prefect-server", native, env)
        test = self.service("prefect-server")["healthcheck"]["test"]
        replacements = {"127.0.0.1:4200": f"127.0.0.1:{self.ports['prefect']}"}
        wait_for(lambda: run_healthcheck(test, env, replacements), "prefect-server healthy", 180, process)

    def stop(self, name: str) -> int | None:
        """Stop one service (SIGTERM to its process group, SIGKILL after 20 s); its exit code."""
        process = self.processes.get(name)
        _stop(process)
        return process.returncode if process else None

    # --- seaweedfs ------------------------------------------------------------------------------

    def seaweedfs_command(self) -> list[str]:
        """The compose command with only addresses, ports and the data directory made native."""
        command = service_command(self.service("seaweedfs"))
        native = {
            "-dir=/data": f"-dir={self.root / 'seaweedfs'}",
            "-ip=seaweedfs": "-ip=127.0.0.1",
            "-ip.bind=0.0.0.0": "-ip.bind=127.0.0.1",
            "-s3.port=8333": f"-s3.port={self.ports['s3']}",
        }
        assert set(native) <= set(command), command
        # Ports compose leaves at their defaults inside the container are chosen free here.
        extra = [f"-{name}.port={self.ports[name]}" for name in ("master", "volume", "filer")]
        extra += [
            f"-{name}.port.grpc={self.ports[name + '.grpc']}" for name in ("s3", "master", "volume", "filer")
        ]
        return [weed_binary(), *(native.get(argument, argument) for argument in command), *extra]

    def seaweedfs_healthy(self, env: dict[str, str]) -> bool:
        """The compose health check, run natively: the script it mounts, on the native ports."""
        service = self.service("seaweedfs")
        test = service["healthcheck"]["test"]
        mounts = {inside: host for host, inside, *_ in (volume.split(":") for volume in service["volumes"])}
        script = (INFRA / mounts[test[-1]]).resolve()
        native_env = {
            **env,
            "SEAWEEDFS_S3_PORT": str(self.ports["s3"]),
            "SEAWEEDFS_MASTER_PORT": str(self.ports["master"]),
        }
        return run_healthcheck([*test[:-1], str(script)], native_env, {})

    def start_seaweedfs(self) -> None:
        (self.root / "seaweedfs").mkdir(exist_ok=True)
        env = {**os.environ, **self.environment("seaweedfs")}
        process = self._popen("seaweedfs", self.seaweedfs_command(), env)
        wait_for(lambda: self.seaweedfs_healthy(env), "seaweedfs healthy", 120, process)

    # --- workers ------------------------------------------------------------------------------------

    def worker_environment(self, name: str, overrides: dict[str, str]) -> dict[str, str]:
        health_port = self.ports["cpu-health" if name == "cpu-worker" else "gpu-health"]
        return {
            **os.environ,
            **self.environment(name),
            "PREFECT_WORKER_WEBSERVER_PORT": str(health_port),  # two workers share this host
            "PREFECT_HOME": str(self.root / name),
            "HOME": str(self.root / name),  # the image's /home/retrainer (its caches)
            **overrides,
        }

    def start_worker(self, name: str, overrides: dict[str, str]) -> subprocess.Popen:
        """The worker's compose command (the image's console script, from this virtualenv)."""
        command = service_command(self.service(name))
        assert command[0] == "retrainer", command
        env = self.worker_environment(name, overrides)
        (self.root / name).mkdir(exist_ok=True)
        process = self._popen(name, [str(Path(sys.executable).with_name("retrainer")), *command[1:]], env)
        test = self.service(name)["healthcheck"]["test"]
        replacements = {"127.0.0.1:8080": f"127.0.0.1:{env['PREFECT_WORKER_WEBSERVER_PORT']}"}
        wait_for(lambda: run_healthcheck(test, env, replacements), f"{name} healthy", 120, process)
        return process

    def stop_all(self, postgres: Path | None) -> None:
        """Tear down: a short grace each (weed takes 12-27 s to exit; nothing here needs its data)."""
        for name in reversed(list(self.processes)):
            _stop(self.processes[name], timeout_s=3)
        if postgres is not None:
            self.stop_postgres(postgres)
