"""One nightly run's stages as the curated data grows: time and peak memory at 1k, 10k and 100k tickets.

For each size a fresh bucket (SeaweedFS, `weed mini`, or `--endpoint file:///DIR` for the local-directory
store) holds that many curated tickets (the NLBSE'24 issues when present, `--data`, topped up with
generated tickets) as one dataset version, and `--new` generated tickets land in ``incoming/``. Then the
night's stages run with the product's functions, each timed and its peak resident memory (above the
stage's start) sampled:

- ingest: read the manifest, find and parse the new batch, read the curated data;
- validate: the batch against the curated data (leakage and conflicts included);
- curate: splits, the new dataset version (`tasks.dataset.write_curated`: a part of new rows), manifest;
- lexical fit (full): the lexical half on every curated train and validation ticket; (incremental): on
  the new tickets and a sample of the others, `lexical_max_rows` in all;
- train (full) and train (incremental): the transformer's steps and epoch evaluations;
- score both: challenger and champion on the eval split;
- publish: a trained model folder uploaded as a new version.

The transformer's steps and scoring are *extrapolated* on a CPU: a probe trains `--probe-train` tickets
for one epoch and scores `--probe-score`, and the seconds per ticket times the tickets each plan trains
(8 epochs of every train ticket, or 3 epochs of new plus replayed ones: `retrainer.core.training_plan`)
and the eval split give those rows; every other stage is measured at full size. Prints a Markdown table,
writes `--json` and a PNG of time against size (`--png`).

    .venv/bin/python benchmarks/scaling.py --sizes 1000,10000,100000 --png benchmarks/scaling.png
"""

import argparse
import json
import resource
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import night_at_scale as at_scale
import pandas as pd

from app.samples import generate_tickets, tickets_to_csv
from app.seaweed import LocalS3
from retrainer.core.lexical import fit_lexical_half
from retrainer.core.scoring import score_model
from retrainer.core.training import TrainingSpec, fine_tune
from retrainer.core.training_plan import incremental_config, incremental_splits
from retrainer.core.validation import validate_batches
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import open_store
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    latest_rows,
    read_curated,
    split_rows,
    with_splits,
    write_curated,
)
from tasks.ingest import discover_new_batches, load_batches
from tasks.manifest import Manifest, commit_manifest, read_manifest
from tasks.registry import new_version_id, publish_model

from baseline import NLBSE, issues_if_present

KEY, SECRET = "scaling", "scaling-secret"
PAGE_MB = resource.getpagesize() / 2**20


class PeakMemory:
    """Samples this process's resident memory every 20 ms; `peak_mb` is the most above the start."""

    def __init__(self) -> None:
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def peak_mb(self) -> float:
        return self.peak - self.start


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_MB


@contextmanager
def stage(name: str, results: dict):
    """Time the block and sample its peak memory into ``results[name]``."""
    started = time.perf_counter()
    with PeakMemory() as memory:
        yield
    results[name] = {"seconds": round(time.perf_counter() - started, 2), "peak_mb": round(memory.peak_mb, 1)}


def history(size: int, issues: pd.DataFrame | None) -> pd.DataFrame:
    """`size` curated tickets with their sources and splits: the issues first, then generated ones."""
    real = issues[["ticket_id", "text", "label"]].head(size) if issues is not None else None
    generated = generate_tickets(size - (0 if real is None else len(real)), seed=7, id_prefix="H")
    rows = pd.concat([frame for frame in (real, generated) if frame is not None], ignore_index=True)
    rows = rows[["ticket_id", "text", "label"]].assign(
        source_key=[f"incoming/history-{n % 10}.csv" for n in range(len(rows))], source_etag="history"
    )
    return with_splits(None, rows, 0.2, 0.1)


def seeded_bucket(resources: Resources, size: int, new: int, issues: pd.DataFrame | None) -> None:
    """A bucket holding `size` curated tickets as one dataset version, and `new` tickets in incoming/."""
    store = resources.store
    store.ensure_bucket()
    version = write_curated(store, history(size, issues))
    commit_manifest(store, Manifest(dataset_version=version, objects={}), None)
    store.put("incoming/night.csv", tickets_to_csv(generate_tickets(new, seed=11, id_prefix="N")))


def night(resources: Resources, results: dict) -> pd.DataFrame:
    """The ingest, validate and curate stages of a night, measured; the curated data after it."""
    store, settings = resources.store, resources.settings
    with stage("ingest", results):
        manifest, etag = read_manifest(store)
        loaded = load_batches(store, discover_new_batches(store, manifest), settings.ingest)
        curated = read_curated(store, manifest.dataset_version)
    with stage("validate", results):
        validated = validate_batches(loaded, settings.validation, settings.ingest.label_aliases, curated)
    with stage("curate", results):
        new_rows = pd.concat([result.accepted for result in validated], ignore_index=True)
        new_rows = with_splits(curated, new_rows, settings.eval_fraction, settings.validation_fraction)
        version = write_curated(store, new_rows, manifest.dataset_version)
        commit_manifest(store, manifest.model_copy(update={"dataset_version": version}), etag)
        curated = latest_rows([curated, new_rows])
    results["new_rows"] = {"train": int((new_rows["split"] == TRAIN).sum()), "all": len(new_rows)}
    return curated


def probe(settings: RetrainerSettings, curated: pd.DataFrame, args, workdir: Path) -> tuple[Path, dict]:
    """Train `--probe-train` tickets for one epoch and score `--probe-score`: seconds per ticket."""
    config = settings.training.model_copy(
        update={"num_train_epochs": 1.0, "average_share": 0.0, "lexical_weight": 0.0}
    )
    train, validation = split_rows(curated, TRAIN), split_rows(curated, VALIDATION)
    spec = TrainingSpec(settings.base_model, settings.base_model_revision, config)
    with PeakMemory() as train_memory:
        model_dir = fine_tune(train.head(args.probe_train), validation.head(64), spec, workdir / "probe")
    steps = json.loads((model_dir / "training.json").read_text())["seconds"]["train_steps"]
    eval_rows = split_rows(curated, EVAL).head(args.probe_score)
    started = time.perf_counter()
    with PeakMemory() as score_memory:
        score_model(model_dir, eval_rows, config.max_length, [False] * len(eval_rows))
    return model_dir, {
        "train_s_per_ticket": steps / min(args.probe_train, len(train)),
        "score_s_per_ticket": (time.perf_counter() - started) / len(eval_rows),
        "train_peak_mb": round(train_memory.peak_mb, 1),
        "score_peak_mb": round(score_memory.peak_mb, 1),
    }


def training_stages(settings: RetrainerSettings, curated: pd.DataFrame, rates: dict, results: dict) -> None:
    """Both plans' lexical fit (measured) and transformer training (extrapolated from the probe): the
    full plan on every curated ticket, the incremental one on the night's plus replayed tickets."""
    splits = (split_rows(curated, TRAIN), split_rows(curated, VALIDATION))
    seen = {(f"incoming/history-{n}.csv", "history") for n in range(10)}
    *incremental, lexical_rows = incremental_splits(splits, seen, settings.incremental, seed=0)
    full, mask = settings.training, settings.training.input_recipe().mask
    plans = {
        "full": (splits, pd.concat(splits), full),
        "incremental": (incremental, lexical_rows, incremental_config(full, settings.incremental)),
    }
    for plan, ((train, validation), lexical, config) in plans.items():
        with stage(f"lexical fit ({plan})", results):
            fit_lexical_half(lexical, config.lexical_weight, mask)
        per_epoch = len(train) * rates["train_s_per_ticket"] + len(validation) * rates["score_s_per_ticket"]
        results[f"train ({plan})"] = {
            "seconds": round(config.num_train_epochs * per_epoch, 1),
            "peak_mb": rates["train_peak_mb"],
            "extrapolated": True,
            "tickets": len(train),
            "lexical_tickets": len(lexical),
        }
    eval_rows = len(split_rows(curated, EVAL))
    results["score both"] = {
        "seconds": round(2 * eval_rows * rates["score_s_per_ticket"], 1),
        "peak_mb": rates["score_peak_mb"],
        "extrapolated": True,
    }


def fit_incremental_lexical(
    settings: RetrainerSettings, curated: pd.DataFrame, new_sources: set[tuple[str, str]]
) -> int:
    """The incremental plan's lexical fit on `curated`, whose batches but `new_sources` the champion was
    trained on; the tickets it read."""
    splits = (split_rows(curated, TRAIN), split_rows(curated, VALIDATION))
    seen = set(zip(curated["source_key"], curated["source_etag"], strict=True)) - new_sources
    *_, lexical_rows = incremental_splits(splits, seen, settings.incremental, seed=0)
    config = incremental_config(settings.training, settings.incremental)
    fit_lexical_half(lexical_rows, config.lexical_weight, settings.training.input_recipe().mask)
    return len(lexical_rows)


def measure_at_scale(resources: Resources, issues, args, workdir: Path) -> dict:
    """One night on `--at-scale` curated tickets in `--batches` batches (`night_at_scale`)."""
    settings, peak = resources.settings, at_scale.ProcessPeak()
    results: dict = {"size": args.at_scale, "batches": args.batches}
    with at_scale.timed("build the history (not a night's work)", results, peak):
        eval_rows, lineage = at_scale.build_history(resources, args.at_scale, args.batches, issues)
    tiny = at_scale.tiny_model_like(settings.base_model, workdir / "tiny")
    at_scale.publish_champion(resources, tiny, lineage, eval_rows)
    forget_id = eval_rows["ticket_id"].iloc[len(eval_rows) // 2]
    del eval_rows
    curated = read_curated(resources.store, read_manifest(resources.store)[0].dataset_version)
    real_dir, rates = probe(settings, curated, args, workdir / "probe")
    del curated
    results |= at_scale.night(resources, tiny, real_dir, forget_id, peak, fit_incremental_lexical)
    results["rates"] = rates
    at_scale.write_table(results, rates["score_s_per_ticket"])
    return results


def measure_size(resources: Resources, size: int, issues, args, workdir: Path) -> dict:
    """Every stage of one night on a bucket of `size` curated tickets."""
    results: dict = {"size": size}
    seeded_bucket(resources, size, args.new, issues)
    curated = night(resources, results)
    model_dir, rates = probe(resources.settings, curated, args, workdir / f"size-{size}")
    training_stages(resources.settings, curated, rates, results)
    with stage("publish", results):
        publish_model(resources.store, model_dir, new_version_id(), {"benchmark": "scaling"})
    results["rates"] = rates
    return results


STAGES = (
    "ingest",
    "validate",
    "curate",
    "lexical fit (full)",
    "train (full)",
    "lexical fit (incremental)",
    "train (incremental)",
    "score both",
    "publish",
)


def print_table(rows: list[dict]) -> None:
    """Seconds (and peak MB) per stage and size; `*` marks extrapolated figures."""
    print("| stage | " + " | ".join(f"{row['size']:,} tickets" for row in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in STAGES:
        cells = [_cell(row[name]) for row in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _cell(result: dict) -> str:
    star = "*" if result.get("extrapolated") else ""
    return f"{result['seconds']:,.1f} s{star} ({result['peak_mb']:,.0f} MB)"


def draw(rows: list[dict], path: Path) -> None:
    """Seconds per stage against curated size, log-log."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    sizes = [row["size"] for row in rows]
    for name in STAGES:
        axes.plot(
            sizes,
            [max(row[name]["seconds"], 0.01) for row in rows],
            marker="o",
            label=name,
            linestyle="--" if rows[0][name].get("extrapolated") else "-",
        )
    axes.set(
        xscale="log",
        yscale="log",
        xlabel="curated tickets",
        ylabel="seconds (dashed: extrapolated)",
        title="One nightly run's stages as data grows (CPU)",
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--new", type=int, default=1000, help="new tickets landing that night")
    parser.add_argument(
        "--data", type=Path, default=None, help=f"NLBSE'24 issues (default {NLBSE} when present)"
    )
    parser.add_argument(
        "--endpoint", default=None, help="file:///DIR for the local-directory store; default: SeaweedFS"
    )
    parser.add_argument("--probe-train", type=int, default=256)
    parser.add_argument("--probe-score", type=int, default=256)
    parser.add_argument(
        "--at-scale", type=int, default=None, help="instead: one night on this many curated tickets, measured"
    )
    parser.add_argument("--batches", type=int, default=1000, help="with --at-scale: the history's batches")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    issues = issues_if_present(args.data)
    workdir = Path(tempfile.mkdtemp(prefix="scaling-"))
    rows = []
    with LocalS3(workdir / "s3", KEY, SECRET, workdir / "weed.log") as s3:
        if args.at_scale:
            s3_settings = S3Settings(endpoint_url=args.endpoint or s3.endpoint_url, bucket="at-scale")
            settings = RetrainerSettings(s3=s3_settings, work_dir=workdir / "work")
            store = open_store(s3_settings, credentials=(KEY, SECRET))
            result = measure_at_scale(Resources(settings, store), issues, args, workdir)
            if args.json:
                args.json.write_text(json.dumps(result, indent=2, default=str))
            return
        for size in (int(size) for size in args.sizes.split(",")):
            endpoint = args.endpoint or s3.endpoint_url
            s3_settings = S3Settings(endpoint_url=endpoint, bucket=f"scaling-{size}")
            settings = RetrainerSettings(s3=s3_settings, work_dir=workdir / "work")
            store = open_store(s3_settings, credentials=(KEY, SECRET))
            rows.append(measure_size(Resources(settings, store), size, issues, args, workdir))
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.png:
        draw(rows, args.png)


if __name__ == "__main__":
    main()
