"""Serving speed: `retrainer serve` vs a FastAPI endpoint calling `pipeline("text-classification")`.

The baseline is what a user writes from the seed's last paragraph ("the next logical step is deploying
it for inference"): a FastAPI endpoint that calls transformers' text-classification pipeline once per
request (a plain `def`, so FastAPI runs it in its thread pool), served by uvicorn. Both serve the same
model, published to a store (a local folder by default, `--store s3` for a local SeaweedFS), on
loopback ports of this machine, and are measured in the same run, cell by cell, in alternating rounds:
one ticket per request at concurrency 1, 8 and 32, for short tickets and for GitHub-issue-length texts
(the NLBSE'24 issues with `--data` or at the default place, else generated long texts). Each cell is
bounded by `--requests` and `--seconds`. The load generator (aiohttp, asyncio) shares the CPU with the
servers. Then the production pointer is flipped to a second version while a client sends requests, and
the seconds until the first answer from the new version are printed. Last, with the servers stopped,
each side's scoring alone is timed in this process (the pipeline one text a call, the service's scoring
32 a call): the requests/s the service's scoring alone allows, against the baseline's throughput, is
the most the service can have over the baseline on this CPU.

The model is the packaged base model with a seeded random head, the default input recipe and a lexical
half fitted on generated tickets (speed does not depend on the weights), or `--model-dir`, a published
model folder (e.g. the demo's `.demo/production-model/m-...`). Both truncate at 128 tokens.
Run: `.venv/bin/python benchmarks/serving.py [--requests 200 --seconds 30 --data PATH]`.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil

from app.samples import generate_tickets
from app.seaweed import LocalS3, free_ports
from retrainer.records import ProductionPointer
from retrainer.settings import S3Settings
from retrainer.storage import open_store
from tasks.registry import flip_production_pointer, publish_model, read_production_pointer

from baseline import issues_if_present

BUCKET = "serving-bench"
MAX_LENGTH = 128
S3_KEYS = ("serving-bench", "serving-bench-secret")  # a loopback-only store this script starts


# --- the baseline server (run in its own process by this script) -------------------------------------


def baseline_app(model_dir: str):
    """What a user writes: one pipeline, called per request, all three scores back."""
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model_dir, device="cpu")
    app = FastAPI()

    class Ticket(BaseModel):
        text: str

    @app.post("/classify")
    def classify(ticket: Ticket) -> dict:
        scores = classifier(ticket.text, top_k=None, truncation=True, max_length=MAX_LENGTH)
        best = max(scores, key=lambda score: score["score"])
        probabilities = {score["label"]: score["score"] for score in scores}
        return {"label": best["label"], "confidence": best["score"], "probabilities": probabilities}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "alive"}

    return app


def run_baseline_server(model_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(model_dir), host="127.0.0.1", port=port, log_level="warning")


# --- the model and the store -------------------------------------------------------------------------


def published_form(scratch: Path, model_dir: Path | None) -> Path:
    """The folder both servers load: `model_dir`, or one shaped like a run's: the packaged base model with
    a seeded head (`scoring_speed.py`'s), the default input recipe (cleaning, masking) and a lexical half
    fitted on generated tickets."""
    if model_dir is not None:
        return model_dir
    from scoring_speed import with_head

    from retrainer.core.base_models import resolve_base_model
    from retrainer.core.lexical import fit_lexical_half, save_lexical_half
    from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

    published = Path(with_head(resolve_base_model(PACKAGED_BASE_MODEL), scratch / "published"))
    config = TrainingConfig()
    recipe = config.input_recipe()
    recipe.save(published)
    fit = fit_lexical_half(generate_tickets(600, seed=6), config.lexical_weight, recipe.mask)
    save_lexical_half(fit, published)
    return published


def publish(store, model_dir: Path, scratch: Path, version: str) -> None:
    """Publish a copy of `model_dir` as `version` (the registry's own upload, digests recorded)."""
    copy = scratch / "publish" / version
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("metrics.json"))
    publish_model(store, copy, version, {"accuracy": 0.9, "macro_f1": 0.9, "dataset_version": "bench"})


def point_production_at(store, version: str) -> None:
    pointer, etag = read_production_pointer(store)
    flip_production_pointer(
        store,
        ProductionPointer(
            version=version,
            accuracy=0.9,
            dataset_version="bench",
            promoted_at=datetime.now(UTC),
            run_id=f"bench-{version}",
            previous_version=pointer.version if pointer else None,
        ),
        etag,
    )


# --- processes --------------------------------------------------------------------------------------


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> float:
    """Seconds until `url` answers 200 (the process must stay alive meanwhile)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({process.returncode}); its log: {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f}s; log: {log}")


def rss_mb(process: subprocess.Popen) -> float:
    """Resident memory of the server process and its children, MB."""
    parent = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20


# --- load ------------------------------------------------------------------------------------------


class Target:
    """One server: how to build a one-ticket request and read the version from its answer."""

    def __init__(self, name: str, url: str, service: bool, token: str | None = None):
        self.name, self.url, self.service = name, url, service
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def body(self, number: int, text: str) -> dict:
        return {"tickets": [{"id": f"B-{number}", "text": text}]} if self.service else {"text": text}


async def load(target: Target, texts: list[str], concurrency: int, requests: int, seconds: float) -> dict:
    """`requests` one-ticket requests (or fewer, when `seconds` run out) from `concurrency` clients: the
    latencies of the answered ones (s), the failures and the seconds it took."""
    latencies: list[float] = []
    failures = 0
    next_number = 0
    # aiohttp: a third of httpx's CPU per request, and the load generator shares the 2 cores with the
    # server it measures (httpx took ~4 ms of CPU a request, a third of a core at 130 requests/s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=target.headers) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal next_number, failures
            while next_number < requests and time.perf_counter() < deadline:
                number, next_number = next_number, next_number + 1
                sent = time.perf_counter()
                body = target.body(number, texts[number % len(texts)])
                async with client.post(target.url, json=body) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "failures": failures, "seconds": elapsed}


def summary(rounds: list[dict]) -> dict:
    """Requests/s and latency percentiles over the rounds of one server in one cell."""
    done = np.array([latency for part in rounds for latency in part["latencies"]]) * 1000
    return {
        "requests": len(done),
        "failures": sum(part["failures"] for part in rounds),
        "per_s": len(done) / sum(part["seconds"] for part in rounds),
        "p50_ms": float(np.percentile(done, 50)) if len(done) else float("nan"),
        "p99_ms": float(np.percentile(done, 99)) if len(done) else float("nan"),
    }


async def flip_time(store, service: Target, new_version: str, texts: list[str], timeout_s: float) -> dict:
    """Flip the pointer while 4 clients send requests; seconds to the first answer from `new_version`."""
    seen_new: list[float] = []
    failures = answers = 0
    versions: set[str] = set()
    stop_at = time.monotonic() + timeout_s
    flipped_at = 0.0

    async with httpx.AsyncClient(timeout=60, headers=service.headers) as client:

        async def worker(offset: int) -> None:
            nonlocal failures, answers
            number = offset
            while not seen_new and time.monotonic() < stop_at:
                response = await client.post(
                    service.url, json=service.body(number, texts[number % len(texts)])
                )
                number += 4
                if response.status_code != 200:
                    failures += 1
                    continue
                answers += 1
                version = response.json()["model_version"]
                versions.add(version)
                if version == new_version and flipped_at and not seen_new:
                    seen_new.append(time.monotonic() - flipped_at)

        async def flipper() -> None:
            nonlocal flipped_at
            await asyncio.sleep(1.0)  # the clients are sending
            await asyncio.to_thread(point_production_at, store, new_version)
            flipped_at = time.monotonic()

        await asyncio.gather(flipper(), *(worker(offset) for offset in range(4)))
    return {
        "seconds": seen_new[0] if seen_new else None,
        "answers": answers,
        "failures": failures,
        "versions": sorted(versions),
    }


# --- the run -----------------------------------------------------------------------------------------


def texts_of_both_kinds(data: Path | None, count: int = 400) -> dict[str, list[str]]:
    short = generate_tickets(count, seed=11)["text"].tolist()
    issues = issues_if_present(data)
    if issues is not None:
        long = issues.sample(n=min(count, len(issues)), random_state=0)["text"].tolist()
        kind = "GitHub issues (NLBSE'24)"
    else:  # about the length of an issue: a dozen generated tickets in one text
        pool = generate_tickets(count * 12, seed=12)["text"].tolist()
        long = [" ".join(pool[i : i + 12]) for i in range(0, len(pool), 12)]
        kind = "long generated texts"
    print(
        f"texts: short generated tickets (mean {np.mean([len(t) for t in short]):.0f} chars), "
        f"{kind} (mean {np.mean([len(t) for t in long]):.0f} chars)"
    )
    return {"short tickets": short, "issue-length texts": long}


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'texts':<19} {'conc':>4} | {'baseline req/s':>14} {'p50 ms':>8} {'p99 ms':>8} | "
        f"{'serve req/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'batch':>5} | "
        f"{'throughput':>10} {'p99 base/serve':>14}"
    )
    for row in rows:
        base, ours = row["baseline"], row["service"]
        print(
            f"{row['texts']:<19} {row['concurrency']:>4} | {base['per_s']:>14.1f} {base['p50_ms']:>8.1f} "
            f"{base['p99_ms']:>8.1f} | {ours['per_s']:>11.1f} {ours['p50_ms']:>8.1f} "
            f"{ours['p99_ms']:>8.1f} {row['mean_batch']:>5.1f} | "
            f"{ours['per_s'] / base['per_s']:>9.2f}x {base['p99_ms'] / ours['p99_ms']:>13.2f}x"
        )
    failures = sum(row[name]["failures"] for row in rows for name in ("baseline", "service"))
    print(f"failed requests: {failures}")


def check_targets(rows: list[dict]) -> None:
    """The issue's targets: >= 3x throughput at concurrency 32, p99 no worse at concurrency 1."""
    for row in rows:
        base, ours = row["baseline"], row["service"]
        if row["concurrency"] == 32:
            ratio = ours["per_s"] / base["per_s"]
            verdict = "met" if ratio >= 3 else "NOT met"
            print(f"target {row['texts']}, concurrency 32: throughput {ratio:.2f}x (>= 3x: {verdict})")
        if row["concurrency"] == 1:
            verdict = "met" if ours["p99_ms"] <= base["p99_ms"] else "NOT met"
            print(
                f"target {row['texts']}, concurrency 1: p99 {ours['p99_ms']:.1f} ms vs "
                f"{base['p99_ms']:.1f} ms (no worse: {verdict})"
            )


def compute_ceiling(
    model_dir: Path, texts: dict[str, list[str]], cells: list[dict], count: int = 64
) -> dict[str, dict]:
    """What the CPU allows, timed in this process with the servers stopped: each side's milliseconds of
    scoring per ticket (the pipeline one text a call, the service's scoring 32 a call, masking and the
    lexical half included), and the requests/s the service's scoring alone allows on these cores against
    the baseline's measured throughput at the highest concurrency: no HTTP side can beat that ratio."""
    from transformers import pipeline

    from retrainer.core.scoring import load_scoring_model

    classifier = pipeline("text-classification", model=str(model_dir), device="cpu")
    scoring = load_scoring_model(model_dir, MAX_LENGTH)
    ceilings = {}
    for name, kind in texts.items():
        sample = kind[:count]
        per_text = _ms_per_text(
            lambda text: classifier(text, top_k=None, truncation=True, max_length=MAX_LENGTH), sample, 1
        )
        batched = _ms_per_text(scoring.probabilities, sample, 32)
        busiest = max((cell for cell in cells if cell["texts"] == name), key=lambda cell: cell["concurrency"])
        baseline_per_s = busiest["baseline"]["per_s"]
        ceilings[name] = {
            "baseline_ms": per_text,
            "service_ms": batched,
            "service_max_per_s": 1000 / batched,
            "max_ratio": 1000 / batched / baseline_per_s,
        }
        print(
            f"compute per ticket, {name}: baseline {per_text:.1f} ms (one a call), service {batched:.1f} ms "
            f"(32 a call): the service's scoring alone allows {1000 / batched:.0f} requests/s on this CPU, "
            f"{ceilings[name]['max_ratio']:.2f}x the baseline's {baseline_per_s:.1f}/s at concurrency "
            f"{busiest['concurrency']}"
        )
    return ceilings


def _ms_per_text(score, texts: list[str], batch: int) -> float:
    """Milliseconds per text of `score` over `texts`, `batch` at a time (one call first as a warm-up)."""
    score(texts[0] if batch == 1 else texts[:batch])
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        score(texts[start] if batch == 1 else texts[start : start + batch])
    return (time.perf_counter() - started) * 1000 / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
    parser.add_argument("--model-dir", type=Path, help="a published model folder (default: built here)")
    parser.add_argument("--requests", type=int, default=200, help="most requests per server and cell")
    parser.add_argument("--seconds", type=float, default=30.0, help="most seconds per server and cell")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell and server")
    parser.add_argument("--store", choices=("folder", "s3"), default="folder", help="file:// or SeaweedFS")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the service's pointer poll (s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline_server(args.baseline_server[0], int(args.baseline_server[1]))
        return
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch_name:
        scratch = Path(scratch_name)
        if args.store == "s3":
            with LocalS3(scratch / "s3", *S3_KEYS, scratch / "seaweedfs.log") as s3:
                run(args, scratch, S3Settings(endpoint_url=s3.endpoint_url, bucket=BUCKET), S3_KEYS)
        else:
            run(args, scratch, S3Settings(endpoint_url=f"file://{scratch / 'store'}", bucket=BUCKET), None)


def run(args, scratch: Path, s3_settings: S3Settings, keys: tuple[str, str] | None) -> None:
    texts = texts_of_both_kinds(args.data)
    model_dir = published_form(scratch, args.model_dir)
    store = open_store(s3_settings, credentials=keys)
    store.ensure_bucket()
    first, second = "m-bench-first", "m-bench-second"
    for version in (first, second):
        publish(store, model_dir, scratch, version)
    point_production_at(store, first)

    base_port, serve_port = free_ports(("baseline", "serve")).values()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    service_env = {
        **env,
        "RETRAINER_S3__ENDPOINT_URL": s3_settings.endpoint_url,
        "RETRAINER_S3__BUCKET": BUCKET,
        "RETRAINER_WORK_DIR": str(scratch / "work"),
        "RETRAINER_SERVE__POLL_INTERVAL_S": str(args.poll_interval),
    }
    if keys:
        service_env |= {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1]}
    logs = {name: scratch / f"{name}.log" for name in ("baseline", "serve")}
    script = [sys.executable, str(Path(__file__).resolve())]
    baseline = start([*script, "--baseline-server", str(model_dir), str(base_port)], env, logs["baseline"])
    retrainer = str(Path(sys.executable).with_name("retrainer"))
    service = start([retrainer, "serve", "--port", str(serve_port)], service_env, logs["serve"])
    try:
        base_s = wait_ready(f"http://127.0.0.1:{base_port}/healthz", baseline, logs["baseline"])
        serve_s = wait_ready(f"http://127.0.0.1:{serve_port}/readyz", service, logs["serve"])
        print(f"ready: baseline {base_s:.1f}s, service {serve_s:.1f}s (model fetched, loaded, canaries)")
        targets = {
            "baseline": Target("baseline", f"http://127.0.0.1:{base_port}/classify", service=False),
            "service": Target("service", f"http://127.0.0.1:{serve_port}/v1/classify", service=True),
        }
        results = measure_all(args, texts, targets)
        memory = {"baseline": rss_mb(baseline), "service": rss_mb(service)}
        print_table(results)
        check_targets(results)
        print(
            f"resident memory after the load: baseline {memory['baseline']:.0f} MB, "
            f"service {memory['service']:.0f} MB"
        )
        flip = asyncio.run(flip_time(store, targets["service"], second, texts["short tickets"], 120))
        seconds = "-" if flip["seconds"] is None else f"{flip['seconds']:.2f}s"
        print(
            f"pointer flip -> first answer from the new version: {seconds} "
            f"(poll interval {args.poll_interval}s; "
            f"includes fetching, loading and the canary check); {flip['answers']} answers meanwhile, "
            f"{flip['failures']} failed, versions {flip['versions']}"
        )
        memory["service_after_flip"] = rss_mb(service)
        print(f"service memory after the swap: {memory['service_after_flip']:.0f} MB")
        summary = {"cells": results, "flip": flip, "memory_mb": memory, "store": args.store}
    finally:
        stop(service)
        stop(baseline)
    summary["compute_ceiling"] = compute_ceiling(model_dir, texts, summary["cells"])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def batch_totals(service: Target) -> tuple[float, float]:
    """Tickets scored and batches run so far, from the service's /metrics (its batch-size histogram)."""
    text = httpx.get(service.url.replace("/v1/classify", "/metrics"), timeout=30).text
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("retrainer_serve_batch_size_")
    )
    return float(values["retrainer_serve_batch_size_sum"]), float(values["retrainer_serve_batch_size_count"])


def measure_all(args, texts: dict[str, list[str]], targets: dict[str, Target]) -> list[dict]:
    """Each cell in `--rounds` alternating rounds (baseline, service, baseline, ...), each round a share of
    the cell's requests and seconds, so load from other work on the machine falls on both alike."""
    for target in targets.values():  # warm-up: first requests pay one-time costs
        for kind in texts.values():
            asyncio.run(load(target, kind, 2, 8, 60))
    rows = []
    requests, seconds = max(1, args.requests // args.rounds), args.seconds / args.rounds
    for name, kind in texts.items():
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            parts: dict[str, list[dict]] = {label: [] for label in targets}
            batches_before = batch_totals(targets["service"])
            for _ in range(args.rounds):
                for label, target in targets.items():
                    parts[label].append(asyncio.run(load(target, kind, concurrency, requests, seconds)))
            tickets, batches = np.subtract(batch_totals(targets["service"]), batches_before)
            cell = {"texts": name, "concurrency": concurrency, "mean_batch": tickets / max(batches, 1)}
            cell |= {label: summary(rounds) for label, rounds in parts.items()}
            rows.append(cell)
            print(
                f"  {name}, concurrency {concurrency}: baseline {cell['baseline']['per_s']:.1f}/s, "
                f"service {cell['service']['per_s']:.1f}/s",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
