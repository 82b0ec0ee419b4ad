"""Nightly cycles on this host as production runs them, timed: for a GPU host, or any host without S3.

Starts a Prefect server (`prefect server start`, SQLite) under `--workdir`, applies the work pools and
deployments (`retrainer setup`, `prefect deploy`), and starts two workers: the `cpu` pool's, which runs
the retrain flow, and the `gpu` pool's, which serves the fine-tune deployment
(`RETRAINER_FINE_TUNE_DEPLOYMENT=fine-tune/fine-tune`). The object store is the local-directory store
(`RETRAINER_S3__ENDPOINT_URL=file://...`, `retrainer.storage.FolderStore`), since such a host has no S3
server. Then, per cycle, a batch of generated tickets lands in ``incoming/`` and the nightly-retrain
deployment runs as the schedule (or the UI's Run button) would start it: ingest, validate, fine-tune on
the gpu pool, score champion and challenger, gate, publish. Prints each cycle's decision and the
timings of both flow runs and of the fine-tune's phases (``training.json``); `--json` keeps them.

    python benchmarks/nightly_cycle.py --workdir /tmp/cycle [--base-model DIR --random-init]
        [--tickets 600,300] [--epochs 8]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.samples import generate_tickets, tickets_to_csv
from retrainer.settings import PACKAGED_BASE_MODEL, S3Settings
from retrainer.storage import open_store

from baseline import random_copy

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ticket-retrainer"


def environment(workdir: Path, port: int, base_model: str, epochs: float) -> dict[str, str]:
    """What every process of the cycle shares: the Prefect server, the local store, the base model."""
    return {
        **os.environ,
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "RETRAINER_S3__ENDPOINT_URL": (workdir / "objects").as_uri(),
        "RETRAINER_S3__BUCKET": BUCKET,
        "RETRAINER_BASE_MODEL": base_model,
        "RETRAINER_WORK_DIR": str(workdir / "work"),
        "RETRAINER_CHECKOUT_DIR": str(ROOT),
        "RETRAINER_FINE_TUNE_DEPLOYMENT": "fine-tune/fine-tune",
        "RETRAINER_TRAINING__NUM_TRAIN_EPOCHS": str(epochs),
    }


def start(name: str, arguments: list[str], env: dict[str, str], workdir: Path) -> subprocess.Popen:
    """A long-running process of the cycle, its output in ``<workdir>/<name>.log``."""
    log = (workdir / f"{name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", *arguments], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def run(arguments: list[str], env: dict[str, str]) -> str:
    """A one-off command of the cycle; its output, or an error with it."""
    done = subprocess.run(
        [sys.executable, "-m", *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def wait_for_server(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the Prefect server exited with {server.returncode}; see prefect-server.log")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"no Prefect server at {url} after {timeout_s:.0f}s")


def nightly_run(timeout_s: float) -> dict:
    """Start the nightly-retrain deployment as the schedule does and wait; both flow runs' timings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.deployments import run_deployment

    started = time.monotonic()
    flow_run = run_deployment("retrain/nightly-retrain", timeout=timeout_s)
    wall = time.monotonic() - started
    with get_client(sync_client=True) as client:
        fine_tunes = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["fine-tune"])))
    ours = [run for run in fine_tunes if run.start_time and run.start_time >= flow_run.start_time]
    return {
        "state": flow_run.state.name if flow_run.state else None,
        "wall_s": round(wall, 1),
        "retrain_run_s": round(flow_run.total_run_time.total_seconds(), 1),
        "fine_tune_run_s": [round(run.total_run_time.total_seconds(), 1) for run in ours],
    }


def decision_of_last_run(store) -> dict:
    """The newest decision record (models/history/), as the run wrote it."""
    history = store.list_objects(store.settings.models_prefix + "history/")
    return json.loads(store.get(history[-1].key)[0]) if history else {}


def fine_tune_phases(store, version: str | None) -> dict:
    """Seconds per phase (``training.json``) of a published challenger; empty when it was not published."""
    found = store.get_if_exists(f"{store.settings.models_prefix}{version}/training.json") if version else None
    return json.loads(found[0]).get("seconds", {}) if found else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="emptied first")
    parser.add_argument("--port", type=int, default=4297)
    parser.add_argument("--base-model", default=PACKAGED_BASE_MODEL)
    parser.add_argument(
        "--random-init", action="store_true", help="random weights of the base model's config"
    )
    parser.add_argument("--tickets", default="600,300", help="tickets landing before each cycle")
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one nightly run may take")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    base = random_copy(args.base_model, args.workdir / "base") if args.random_init else args.base_model
    env = environment(args.workdir.resolve(), args.port, base, args.epochs)
    os.environ.update(env)  # this process drops tickets and starts runs against the same server and store
    processes = []
    try:
        started = time.monotonic()
        server = start("prefect-server", ["prefect", "server", "start"], env, args.workdir)
        processes.append(server)
        wait_for_server(env["PREFECT_API_URL"], server)
        print(run(["app.cli", "setup", "--create-bucket"], env).strip())
        run(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
        for pool in ("cpu", "gpu"):
            processes.append(
                start(f"{pool}-worker", ["app.cli", "worker", "--pool", pool], env, args.workdir)
            )
        print(f"server, deployments and workers ready in {time.monotonic() - started:.0f}s")
        store = open_store(S3Settings(endpoint_url=env["RETRAINER_S3__ENDPOINT_URL"], bucket=BUCKET))
        cycles = []
        for number, count in enumerate(int(n) for n in args.tickets.split(",")):
            batch = f"batch-{number + 1:04d}.csv"
            tickets = generate_tickets(count, seed=number + 1, id_prefix=f"C{number + 1}")
            store.put(store.settings.incoming_prefix + batch, tickets_to_csv(tickets))
            timings = nightly_run(args.timeout)
            decision = decision_of_last_run(store)
            cycle = {"cycle": number + 1, "tickets": count, **timings, "decision": decision.get("action")}
            cycle["production_version"] = decision.get("production_version")
            cycle["reasons"] = decision.get("reasons")
            cycle["fine_tune_phases"] = fine_tune_phases(store, decision.get("challenger_version"))
            cycles.append(cycle)
            print(json.dumps(cycle))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if args.json:
        args.json.write_text(json.dumps(cycles, indent=2))


if __name__ == "__main__":
    main()
