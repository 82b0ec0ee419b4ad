"""Nightly arrivals on real GitHub issues: full retraining against the incremental policy, through the
real retrain flow and its gate.

Data: the NLBSE'24 issues (`--data PATH`, default ../shared/data/nlbse24/issues_train.csv). The same
stratified 20% that `quality.py` tests on (300 issues) is held out and never sent; the other 1,200
arrive in a random order (`--order created`: by creation date): `--start` of them on night 0, then
`--per-night` each night. Each arm
(`full`: RETRAINER_INCREMENTAL__ENABLED off; `incremental`: the policy's defaults) has its own bucket on
the local-directory store and runs the real `retrain` flow in-process (ephemeral Prefect) every night:
ingest, validate, curate, fine-tune, score both models on the same eval split, gate, publish. Night 0
has no champion, so it is a full retrain in both arms: it runs once and both arms start from a copy.

After each night, the model in production in each arm is scored on the held-out issues (macro-F1,
accuracy). Prints per night and arm the decision, the plan, the tickets trained on, the fine-tune's
seconds (its ``training.json``), the run's wall time and the production model's scores; appends each as
a JSON line to `--results`.

    .venv/bin/python benchmarks/growth_simulation.py --nights 4 --results /tmp/growth.jsonl
"""

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from quality import SPLIT_SEED, TEST_SHARE, scores, stratified_split

from baseline import NLBSE, load_issues

BUCKET = "ticket-retrainer"
ARMS = ("full", "incremental")


def arrivals(issues: pd.DataFrame, start: int, per_night: int, nights: int, created: pd.Series | None):
    """(held-out test rows, one batch of rows per night): the rest in a random order (seeded), or in
    order of creation when `created` is given."""
    rest, test = stratified_split(issues, TEST_SHARE, SPLIT_SEED)
    if created is None:
        rest = rest.sample(frac=1.0, random_state=SPLIT_SEED)
    else:
        rest = rest.assign(created_at=created.loc[rest.index]).sort_values("created_at", kind="stable")
    sizes = [start] + [per_night] * nights
    bounds = np.cumsum([0, *sizes])
    if bounds[-1] > len(rest):
        raise SystemExit(
            f"{bounds[-1]} issues needed, {len(rest)} available: fewer nights or smaller batches"
        )
    return test, [rest.iloc[low:high] for low, high in itertools.pairwise(bounds)]


def arm_resources(root: Path, arm: str, overrides: dict):
    """Settings and a local-directory store for one arm (its own bucket, caches and scratch)."""
    from retrainer.resources import Resources
    from retrainer.settings import IncrementalPolicy, RetrainerSettings, S3Settings, TrainingConfig
    from retrainer.storage import open_store

    settings = RetrainerSettings(
        s3=S3Settings(endpoint_url=(root / "objects").as_uri(), bucket=BUCKET),
        work_dir=root / "work",
        incremental=IncrementalPolicy(enabled=arm == "incremental"),
        **({"training": TrainingConfig(**overrides["training"])} if overrides.get("training") else {}),
        **({"base_model": overrides["base_model"]} if overrides.get("base_model") else {}),
    )
    store = open_store(settings.s3)
    store.ensure_bucket()
    return Resources(settings, store)


def send_batch(resources, night: int, rows: pd.DataFrame) -> None:
    """The night's tickets as a CSV in ``incoming/``, as a producer would drop them."""
    body = rows[["ticket_id", "text", "label"]].to_csv(index=False).encode()
    resources.store.put(f"incoming/night-{night:02d}.csv", body)


def challenger_facts(resources, record, test: pd.DataFrame) -> dict:
    """The challenger's tickets trained on and fine-tune seconds (its ``training.json``), and its own
    scores on the held-out issues whatever the gate decided: it is published under models/, or kept in
    the run's scratch."""
    from flows.retrain import challenger_prefix
    from retrainer.core.scoring import predict_probabilities
    from retrainer.core.training import training_record
    from tasks.registry import UnknownVersionError, fetch_model

    if record is None or record.challenger_version is None:
        return {}
    store = resources.store
    with tempfile.TemporaryDirectory() as folder:
        try:  # published: fetched and verified as every registry load is
            model_dir = fetch_model(store, record.challenger_version, Path(folder))
        except UnknownVersionError:  # kept by the gate: in the run's scratch
            model_dir = Path(folder) / "challenger"
            store.download_prefix(challenger_prefix(resources, record.run_id), model_dir)
        trained = training_record(model_dir)
        texts, max_length = test["text"].tolist(), resources.settings.training.max_length
        found = scores(test, predict_probabilities(model_dir, texts, max_length).argmax(dim=-1).numpy())
    return {
        "train_rows": trained.get("train_rows"),
        "fine_tune_s": round(sum(trained.get("seconds", {}).values()), 1),
        "challenger_macro_f1": found["macro_f1"],
        "challenger_accuracy": found["accuracy"],
    }


def run_night(resources, night: int, rows: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Send the night's batch and run the retrain flow; what it decided and how long it took."""
    from flows.retrain import failed_record, retrain

    send_batch(resources, night, rows)
    started = time.perf_counter()
    try:
        record = retrain(resources=resources)
    except Exception as error:  # a failed night is a result too: the next night runs on
        record = failed_record(error)
    seconds = time.perf_counter() - started
    return {
        "status": record.status if record else "failed",
        "plan": record.training_plan.summary() if record and record.training_plan else None,
        "mode": record.training_plan.mode if record and record.training_plan else None,
        "train_rows": None,
        "fine_tune_s": 0,
        "run_s": round(seconds, 1),
        "reasons": record.reasons if record else [],
        **challenger_facts(resources, record, test),
    }


def production_scores(resources, test: pd.DataFrame, cache: dict) -> dict:
    """The production model's scores on the held-out issues (once per version)."""
    from retrainer.core.scoring import predict_probabilities
    from tasks.registry import fetch_production_model

    version, model_dir = fetch_production_model(resources.store, resources.settings.model_cache_dir)
    if version not in cache:
        probabilities = predict_probabilities(
            model_dir, test["text"].tolist(), resources.settings.training.max_length
        )
        found = scores(test, probabilities.argmax(dim=-1).numpy())
        cache[version] = {key: found[key] for key in ("macro_f1", "accuracy")}
    return {"production": version, **cache[version]}


def print_table(results: list[dict]) -> None:
    """One row per night and arm, and per arm the total fine-tune time and the mean macro-F1."""
    print(
        f"{'night':>5} {'arm':<12} {'curated':>7} {'status':<9} {'mode':<11} {'trained':>7} "
        f"{'fine-tune s':>11} {'run s':>7} {'macro-F1':>8} {'acc':>6}"
    )
    for row in results:
        print(
            f"{row['night']:>5} {row['arm']:<12} {row['curated']:>7} {row['status']:<9} {row['mode']!s:<11} "
            f"{row['train_rows']!s:>7} {row['fine_tune_s']:>11} {row['run_s']:>7} "
            f"{row['macro_f1']:>8.3f} {row['accuracy']:>6.3f}"
        )
    for arm in ARMS:
        rows = [row for row in results if row["arm"] == arm and row["night"] > 0]
        if rows:
            total = sum(row["fine_tune_s"] for row in rows)
            mean = np.mean([row["macro_f1"] for row in rows])
            print(
                f"{arm}: nights 1-{rows[-1]['night']}: fine-tune {total:.0f} s in all, "
                f"mean macro-F1 {mean:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=NLBSE)
    parser.add_argument("--start", type=int, default=300)
    parser.add_argument("--per-night", type=int, default=150)
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("growth_simulation.jsonl"))
    parser.add_argument(
        "--order",
        choices=("random", "created"),
        default="random",
        help="arrival order: random (a stable stream) or by creation date (the NLBSE repositories and "
        "labels drift strongly over time: the first 300 issues hold one bug report)",
    )
    parser.add_argument(
        "--from-night", type=int, default=0, help="resume an earlier run's --workdir from this night"
    )
    parser.add_argument("--base-model", default=None, help="default: the configured base model")
    parser.add_argument("--epochs", type=float, default=None, help="full retrains' epochs (a rehearsal)")
    args = parser.parse_args()
    overrides = {
        "base_model": args.base_model,
        "training": {"num_train_epochs": args.epochs} if args.epochs else {},
    }

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="growth-"))
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # nothing leaves 127.0.0.1
    issues = load_issues(args.data, "--data")
    created = None
    if args.order == "created":
        created = pd.to_datetime(pd.read_csv(args.data, usecols=["created_at"])["created_at"], utc=True)
    test, batches = arrivals(issues, args.start, args.per_night, args.nights, created)
    print(
        f"held out {len(test)} issues; night 0: {len(batches[0])}, "
        f"then {args.per_night} a night for {args.nights} nights"
    )

    results, caches = [], {arm: {} for arm in ARMS}
    for night, batch in enumerate(batches):
        if night < args.from_night:  # done by an earlier run into the same --workdir
            continue
        arms = ["night0"] if night == 0 else ARMS
        for arm in arms:
            resources = arm_resources(workdir / arm, arm if arm in ARMS else "full", overrides)
            outcome = run_night(resources, night, batch, test)
            for scored_arm in ARMS if night == 0 else [arm]:
                if night == 0:
                    shutil.copytree(workdir / arm, workdir / scored_arm, dirs_exist_ok=True)
                    resources = arm_resources(workdir / scored_arm, scored_arm, overrides)
                row = {
                    "night": night,
                    "arm": scored_arm,
                    "curated": sum(len(b) for b in batches[: night + 1]),
                    **outcome,
                    **production_scores(resources, test, caches[scored_arm]),
                }
                results.append(row)
                with args.results.open("a") as out:
                    out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
