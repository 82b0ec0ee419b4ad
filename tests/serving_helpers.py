"""`retrainer serve` for tests: the command in a process of its own on a free port, model versions shaped
like a run's (the tiny random BERT with an input recipe and a lexical half), clients that keep sending
while the pointer moves, and /metrics read back with prometheus_client's own parser."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.samples import generate_tickets
from retrainer.core.lexical import fit_lexical_half, save_lexical_half
from retrainer.settings import S3Settings, TrainingConfig
from retrainer.storage import ObjectStore
from tasks.registry import new_version_id, publish_model
from tests.registry_helpers import labelled_copy
from tests.tiny_model import save_tiny_bert

POLL_INTERVAL_S = 0.5
STARTUP_TIMEOUT_S = 120.0  # imports torch, transformers and FastAPI, then fetches and loads a model


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def publish_served_version(
    store: ObjectStore,
    tiny_model_dir: Path,
    scratch: Path,
    seed: int = 0,
    *,
    labelled: bool = True,
    garbled_weights: bool = False,
) -> str:
    """Publish a version shaped like a run's: the tiny BERT (drawn with `seed`; the session's for 0) with
    the project's labels (`labelled=False`: its own LABEL_0.., which loaders refuse), the default input
    recipe (clean, mask) and a lexical half fitted on generated tickets. `garbled_weights`: its weights
    file zeroed (same size) before publishing, so its digests agree and only loading it fails. Returns
    its version id."""
    version = new_version_id()
    model_dir = scratch / version
    if seed:
        save_tiny_bert(scratch / f"{version}-base", seed=seed)
        tiny_model_dir = scratch / f"{version}-base"
    if labelled:
        labelled_copy(tiny_model_dir, model_dir)
    else:
        shutil.copytree(tiny_model_dir, model_dir)
    recipe = TrainingConfig().input_recipe()
    recipe.save(model_dir)
    save_lexical_half(fit_lexical_half(generate_tickets(300, seed=seed + 1), 0.4, recipe.mask), model_dir)
    if garbled_weights:
        weights = model_dir / "model.safetensors"
        weights.write_bytes(bytes(weights.stat().st_size))
    publish_model(store, model_dir, version, {"accuracy": 0.8, "macro_f1": 0.8, "dataset_version": "ds"})
    return version


@dataclass
class ServeProcess:
    """A running `retrainer serve`; its output goes to `log_path` (read it to check what it logs)."""

    process: subprocess.Popen
    port: int
    log_path: Path
    token: str | None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None, *, authorised: bool = True) -> httpx.Client:
        """An HTTP client for it, sending its token (or `token`) unless `authorised` is False."""
        token = token or (self.token if authorised else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def log(self) -> str:
        """What it has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def readiness(self) -> dict:
        """The body of GET /readyz (200 or 503)."""
        return httpx.get(f"{self.url}/readyz", timeout=10.0).json()

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Call `check` until true; fail naming `what`, with the end of the log, on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{what}: serve exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                if check():
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout_s:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def wait_serving(self, version: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until /readyz says ready with `version`."""
        self.wait_for(
            lambda: (body := self.readiness()).get("ready") is True and body.get("model_version") == version,
            f"ready with {version}",
            timeout_s,
        )

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        """Wait until /readyz says ready, with whichever version; that version."""
        self.wait_for(lambda: self.readiness().get("ready") is True, "ready", timeout_s)
        return self.readiness()["model_version"]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_serve(
    s3: S3Settings, scratch: Path, token: str | None = None, **serve_settings: object
) -> ServeProcess:
    """`retrainer serve --port <free port>` on bucket `s3.bucket` (credentials: the environment's, as
    conftest's `local_s3` sets them), polling every POLL_INTERVAL_S, plus RETRAINER_SERVE__<NAME> for each
    of `serve_settings`; returns once it listens (/healthz), not once it is ready."""
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETRAINER_S3__ENDPOINT_URL": s3.endpoint_url,
        "RETRAINER_S3__BUCKET": s3.bucket,
        "RETRAINER_WORK_DIR": str(scratch / "work"),
        "RETRAINER_SERVE__POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        **{f"RETRAINER_SERVE__{name.upper()}": str(value) for name, value in serve_settings.items()},
    }
    if token:
        env["RETRAINER_SERVE__TOKEN"] = token
    log_path = scratch / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = ServeProcess(process, port, log_path, token)
    try:
        server.wait_for(
            lambda: httpx.get(f"{server.url}/healthz", timeout=5.0).status_code == 200, "/healthz"
        )
    except BaseException:
        server.stop()
        raise
    return server


def tickets(texts: list[str], prefix: str = "T") -> dict:
    """A /v1/classify body for `texts`, ids `<prefix>-<n>`."""
    return {"tickets": [{"id": f"{prefix}-{n}", "text": text} for n, text in enumerate(texts)]}


@dataclass
class Answer:
    """One /v1/classify call made by a `ContinuousClients` thread."""

    sent: float  # time.monotonic() when sent
    received: float
    status: int | None  # None: no HTTP answer (a connection error, a timeout)
    version: str | None = None  # the answer's model_version
    prediction_versions: set[str] = field(default_factory=set)
    error: str | None = None


class ContinuousClients:
    """`count` threads, each sending /v1/classify (two tickets) back to back until `stop`."""

    def __init__(self, server: ServeProcess, count: int = 4) -> None:
        self.server, self.answers, self._stop = server, [], threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(count)]

    def __enter__(self) -> "ContinuousClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _send(self, client_number: int) -> None:
        body = tickets(
            ["The app crashes every time I click save", "Please add a dark mode"], f"C{client_number}"
        )
        with self.server.client() as client:
            while not self._stop.is_set():
                self._record(client, body)

    def _record(self, client: httpx.Client, body: dict) -> None:
        sent = time.monotonic()
        try:
            response = client.post("/v1/classify", json=body)
        except httpx.HTTPError as error:
            answer = Answer(sent, time.monotonic(), None, error=repr(error))
        else:
            answer = Answer(sent, time.monotonic(), response.status_code)
            if response.status_code == 200:
                payload = response.json()
                answer.version = payload.get("model_version")
                answer.prediction_versions = {p.get("model_version") for p in payload["predictions"]}
            else:
                answer.error = response.text[:200]
        with self._lock:
            self.answers.append(answer)

    def first_answer_from(self, version: str) -> Answer | None:
        """The earliest received answer naming `version`."""
        with self._lock:
            found = [answer for answer in self.answers if answer.version == version]
        return min(found, key=lambda answer: answer.received, default=None)

    def wait_for_version(self, version: str, timeout_s: float) -> Answer | None:
        """Wait until some answer names `version`; that answer, or None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (answer := self.first_answer_from(version)) is not None:
                return answer
            time.sleep(0.05)
        return None


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text as {(sample name, frozenset of its labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def read_metrics(server: ServeProcess) -> dict[tuple[str, frozenset], float]:
    """GET /metrics (no token), parsed."""
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    return metric_samples(response.text)
