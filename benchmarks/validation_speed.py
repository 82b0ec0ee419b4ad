"""Validation speed on 1,000,000 synthetic tickets: the project's validator vs a row-by-row baseline.

Case 1: the baseline is the walking skeleton's validator (a Python function applied to each row, fewer
checks than the project's). Both run in this process on the same frame; prints seconds, rows/s and the
ratio. Case 2: the same new tickets validated against a curated dataset of `--curated` tickets (1% of the
new texts repeat a curated text, half with its label, half with another), with case 1's time as its
baseline: the ratio is what the checks against the curated data cost. Target: each under 10 s on 2 cores.
Run: `.venv/bin/python benchmarks/validation_speed.py [--rows N] [--curated N]` (`--curated 0` skips case 2).
"""

import argparse
import time

import numpy as np
import pandas as pd

from retrainer.core.batch_files import ROW_NUMBER, LoadedBatch
from retrainer.core.labels import LABELS
from retrainer.core.validation import validate_batches
from retrainer.settings import IngestSettings, ValidationPolicy
from tasks.dataset import latest_rows, with_splits

PHRASES = np.array(
    [
        "The export button crashes the app when I click save",
        "Please add a dark mode to the dashboard",
        "How do I change the email address on my account?",
        "Getting a 500 error every time I open the billing page",
        "It would be great if the API supported webhooks",
        "Where can I find last month's invoice?",
    ]
)


def synthetic_tickets(count: int, seed: int = 0, prefix: str = "T") -> pd.DataFrame:
    """`count` tickets with unique texts and ~1% bad rows (empty text, unknown label).

    Ids and texts carry `prefix`, so two sets made with different prefixes share no id and no text.
    """
    rng = np.random.default_rng(seed)
    index = np.arange(count)
    texts = (
        pd.Series(PHRASES[rng.integers(0, len(PHRASES), count)])
        + f" (ref {prefix}"
        + pd.Series(index).astype(str)
        + ")"
    )
    labels = np.array(LABELS)[rng.integers(0, len(LABELS), count)].astype(object)
    bad = rng.random(count) < 0.01
    texts[bad & (index % 2 == 0)] = ""
    labels[bad & (index % 2 == 1)] = "spam"
    return pd.DataFrame(
        {
            "ticket_id": f"{prefix}-" + pd.Series(index).astype(str),
            "text": texts,
            "label": labels,
            "created_at": "2026-03-01T10:00:00+00:00",
            ROW_NUMBER: index + 1,
        }
    )


def curated_tickets(count: int) -> pd.DataFrame:
    """A curated dataset of about `count` good tickets (splits assigned as a run would)."""
    rows = synthetic_tickets(count, seed=1, prefix="C").drop(columns=[ROW_NUMBER])
    rows = rows[rows["text"].ne("") & rows["label"].isin(LABELS)]
    lineage = {"source_key": "incoming/curated.csv", "source_etag": '"curated"', "source_row": 1}
    return latest_rows([with_splits(None, rows.assign(**lineage), 0.2, 0.1)])


def repeating_curated_texts(frame: pd.DataFrame, curated: pd.DataFrame, share: float = 0.01) -> pd.DataFrame:
    """`frame` with `share` of its texts taken from `curated`: half with the curated label, half without."""
    rng = np.random.default_rng(2)
    frame = frame.copy()
    rows = np.flatnonzero(rng.random(len(frame)) < share)
    picked = curated.iloc[rng.integers(0, len(curated), len(rows))]
    next_label = {label: LABELS[(position + 1) % len(LABELS)] for position, label in enumerate(LABELS)}
    labels = picked["label"].to_numpy(dtype=object)
    other = picked["label"].map(next_label).to_numpy(dtype=object)
    frame.loc[rows, "text"] = picked["text"].to_numpy()
    frame.loc[rows, "label"] = np.where(np.arange(len(rows)) % 2 == 0, labels, other)
    return frame


def skeleton_validator(frame: pd.DataFrame) -> pd.Series:
    """The baseline: the first version's per-row checks, one Python call per row."""

    def problem(row):
        if not row["ticket_id"]:
            return "empty ticket_id"
        if not str(row["text"]).strip():
            return "empty text"
        if row["label"] not in LABELS:
            return "unknown label"
        return None

    return frame.apply(problem, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--curated", type=int, default=1_000_000, help="curated tickets for case 2 (0: skip)")
    args = parser.parse_args()
    frame = synthetic_tickets(args.rows)
    batch = LoadedBatch(key="incoming/bench.csv", etag='"bench"', raw=b"", frame=frame, error=None)
    policy = ValidationPolicy(max_bad_row_share=0.5)

    started = time.perf_counter()
    baseline_bad = skeleton_validator(frame.drop(columns=[ROW_NUMBER])).notna().sum()
    baseline = time.perf_counter() - started

    result, ours, cpu = timed_validation(batch, policy, None)

    print(f"{args.rows:,} tickets")
    rate = args.rows / baseline
    print(f"  baseline (row-by-row, 3 checks): {baseline:6.2f}s  {rate:10,.0f} rows/s  bad={baseline_bad}")
    print(
        f"  project (pandera + batch checks): {ours:6.2f}s  {args.rows / ours:10,.0f} rows/s  "
        f"bad={len(result.rejected)}  (process CPU {cpu:.2f}s)"
    )
    print(f"  ratio: {baseline / ours:.2f}x; target under 10 s: {'met' if ours < 10 else 'MISSED'}")
    if args.curated:
        against_curated(frame, args.curated, policy, ours)


def timed_validation(batch: LoadedBatch, policy: ValidationPolicy, curated: pd.DataFrame | None):
    """The validated batch, wall seconds and this process's CPU seconds (on a shared machine the CPU
    time shows what other work on it added to the wall time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    [result] = validate_batches([batch], policy, IngestSettings().label_aliases, curated)
    return result, time.perf_counter() - started, time.process_time() - cpu_started


def against_curated(frame: pd.DataFrame, curated_rows: int, policy: ValidationPolicy, alone: float) -> None:
    """Case 2: the same new tickets against a curated dataset (`alone`: case 1's time, the baseline)."""
    curated = curated_tickets(curated_rows)
    frame = repeating_curated_texts(frame, curated)
    batch = LoadedBatch(key="incoming/bench.csv", etag='"bench"', raw=b"", frame=frame, error=None)
    result, ours, cpu = timed_validation(batch, policy, curated)
    print(f"{len(frame):,} new tickets against {len(curated):,} curated")
    print(
        f"  project: {ours:6.2f}s  {len(frame) / ours:10,.0f} rows/s  accepted={len(result.accepted)} "
        f"merged={len(result.merged)} bad={len(result.rejected)}  (process CPU {cpu:.2f}s)"
    )
    print(f"  ratio to case 1 (no curated data): {ours / alone:.2f}x; target under 10 s: ", end="")
    print("met" if ours < 10 else "MISSED")


if __name__ == "__main__":
    main()
