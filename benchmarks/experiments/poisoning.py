"""Label poisoning on real GitHub issues, through the real retrain flow and its gate (issue 35, item 7).

Night 1 trains a champion on `--night1` NLBSE'24 issues. Night 2 sends `--night2` other issues, clean:
it must promote or be kept for the gate's ordinary reasons, never by the label check. Night 2' starts
from a copy of the bucket after night 1 and sends the same issues poisoned: `--share` (36%) of the bugs
mentioning any of `--words` relabelled ``feature`` (what the issue reproduced). It must be blocked, the
batch named. Issues go in with their NLBSE labels (bug / feature / question), which ingest maps to the
label set through its default aliases.

Each night runs the real `retrain` flow in-process (ephemeral Prefect, the local-directory store, the
packaged MiniLM) with a short recipe (`--epochs`, `--max-length`): a CPU shared with others. Prints, per
night, the decision, the gate's label-check lines, the figures the run record keeps (the champion's
agreement with the new labels against the established ones, both models on the established eval
tickets) and what the check cost (new tickets scored outside the eval split, seconds); appends each as a
JSON line to `--results`.

    .venv/bin/python benchmarks/experiments/poisoning.py --results /tmp/poisoning.jsonl
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# baseline.py and quality.py are imported from benchmarks/, this folder's parent
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from quality import SPLIT_SEED, stratified_split

from baseline import LABEL_MAP, NLBSE, load_issues

BUCKET = "ticket-retrainer"
RAW_LABEL = {label: raw for raw, label in LABEL_MAP.items()}  # the product's name -> NLBSE's
WORDS = ("error", "fail", "exception", "bug")


def night_batches(issues: pd.DataFrame, night1: int, night2: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint stratified samples (seeded): night 1's issues and night 2's."""
    rest, first = stratified_split(issues, night1 / len(issues), SPLIT_SEED)
    _, second = stratified_split(rest, night2 / len(rest), SPLIT_SEED + 1)
    return first, second


def poison(rows: pd.DataFrame, words: tuple[str, ...], share: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """`rows` with `share` of the bugs mentioning any of `words` relabelled feature_request (a seeded
    random choice), and what was changed (counts only)."""
    text = rows["text"].str.lower()
    mentions = (rows["label"] == "bug") & text.apply(lambda value: any(word in value for word in words))
    targets = rows.index[mentions.to_numpy()]
    rng = np.random.default_rng(seed)
    flipped = rng.choice(targets, size=round(share * len(targets)), replace=False)
    poisoned = rows.copy()
    poisoned.loc[flipped, "label"] = "feature_request"
    facts = {
        "bugs": int((rows["label"] == "bug").sum()),
        "bugs_mentioning_words": len(targets),
        "relabelled": len(flipped),
        "label_shift": len(flipped) / len(rows),
    }
    return poisoned, facts


def resources_at(root: Path, epochs: float, max_length: int):
    """Settings and a local-directory store rooted at `root`: the short recipe, incremental nights at
    one epoch."""
    from retrainer.resources import Resources
    from retrainer.settings import IncrementalPolicy, RetrainerSettings, S3Settings, TrainingConfig
    from retrainer.storage import open_store

    settings = RetrainerSettings(
        s3=S3Settings(endpoint_url=(root / "objects").as_uri(), bucket=BUCKET),
        work_dir=root / "work",
        training=TrainingConfig(num_train_epochs=epochs, max_length=max_length),
        incremental=IncrementalPolicy(epochs=1.0),
    )
    store = open_store(settings.s3)
    store.ensure_bucket()
    return Resources(settings, store)


def run_night(resources, name: str, rows: pd.DataFrame) -> dict:
    """Send `rows` as ``incoming/<name>.csv`` with NLBSE's labels, run the retrain flow, and keep what it
    decided and the figures its record holds (no ticket text)."""
    from flows.retrain import failed_record, retrain

    raw = rows.assign(label=rows["label"].map(RAW_LABEL))[["ticket_id", "text", "label"]]
    resources.store.put(f"incoming/{name}.csv", raw.to_csv(index=False).encode())
    started = time.perf_counter()
    try:
        record = retrain(resources=resources)
    except Exception as error:  # a failed night is a result too
        record = failed_record(error)
        if record is None:
            raise
    seconds = time.perf_counter() - started
    return {
        "night": name,
        "status": record.status,
        "run_s": round(seconds, 1),
        "plan": record.training_plan.summary() if record.training_plan else None,
        "challenger_accuracy": record.challenger_accuracy,
        "champion_accuracy": record.champion_accuracy,
        "champion_new_data_accuracy": _accuracy(record.champion_new_data),
        "challenger_new_data_accuracy": _accuracy(record.challenger_new_data),
        "label_check": record.label_check_summary(),
        "suspect_batches": record.suspect_batches,
        "reasons": record.reasons,
    }


def _accuracy(report) -> float | None:
    return report.accuracy if report else None


def print_night(row: dict) -> None:
    """The decision, the label-check lines and the figures, readably."""
    print(f"\n== night {row['night']}: {row['status']} ({row['run_s']} s; {row['plan']})")
    for reason in row["reasons"]:
        if reason.startswith(("accuracy", "label", "established", "SUSPECT")):
            print(f"  - {reason}")
    print(json.dumps({key: value for key, value in row.items() if key != "reasons"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=NLBSE)
    parser.add_argument("--night1", type=int, default=450)
    parser.add_argument("--night2", type=int, default=300)
    parser.add_argument("--share", type=float, default=0.36, help="of the bugs mentioning the words")
    parser.add_argument("--words", nargs="+", default=list(WORDS))
    parser.add_argument("--epochs", type=float, default=2.0, help="night 1's (full) epochs")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("poisoning.jsonl"))
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="poisoning-"))
    (workdir / "clean" / "objects").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # nothing leaves 127.0.0.1
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a loaded, shared CPU
    first, second = night_batches(load_issues(args.data, "--data"), args.night1, args.night2)
    poisoned, facts = poison(second, tuple(args.words), args.share, SPLIT_SEED)
    print(f"night 1: {len(first)} issues; night 2 / 2': {len(second)}; poisoning of 2': {json.dumps(facts)}")

    rows = []
    clean, dirty = workdir / "clean", workdir / "poisoned"
    rows.append(run_night(resources_at(clean, args.epochs, args.max_length), "night-1", first))
    shutil.copytree(clean, dirty)  # night 2' starts from the same champion and bucket
    rows.append(run_night(resources_at(clean, args.epochs, args.max_length), "night-2", second))
    poisoned_row = run_night(resources_at(dirty, args.epochs, args.max_length), "night-2-poisoned", poisoned)
    rows.append({**poisoned_row, "poisoning": facts})
    for row in rows:
        print_night(row)
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
