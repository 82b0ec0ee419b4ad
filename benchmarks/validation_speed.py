"""Validation speed on 1,000,000 synthetic tickets: the project's validator vs a row-by-row baseline.

The baseline is the walking skeleton's validator (a Python function applied to each row, fewer checks
than the project's). Both run in this process on the same frame; prints seconds, rows/s and the ratio.
Target: the project's validator under 10 s on 2 cores. Run: `.venv/bin/python benchmarks/validation_speed.py`.
"""

import argparse
import time

import numpy as np
import pandas as pd

from retrainer import LABELS
from retrainer.settings import IngestSettings, ValidationPolicy
from tasks.ingest import ROW_NUMBER, LoadedBatch
from tasks.validate import validate_batches

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


def synthetic_tickets(count: int, seed: int = 0) -> pd.DataFrame:
    """`count` tickets with unique texts and ~1% bad rows (empty text, unknown label)."""
    rng = np.random.default_rng(seed)
    index = np.arange(count)
    texts = (
        pd.Series(PHRASES[rng.integers(0, len(PHRASES), count)])
        + " (ref "
        + pd.Series(index).astype(str)
        + ")"
    )
    labels = np.array(LABELS)[rng.integers(0, len(LABELS), count)].astype(object)
    bad = rng.random(count) < 0.01
    texts[bad & (index % 2 == 0)] = ""
    labels[bad & (index % 2 == 1)] = "spam"
    return pd.DataFrame(
        {
            "ticket_id": "T-" + pd.Series(index).astype(str),
            "text": texts,
            "label": labels,
            "created_at": "2026-03-01T10:00:00+00:00",
            ROW_NUMBER: index + 1,
        }
    )


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
    args = parser.parse_args()
    frame = synthetic_tickets(args.rows)
    batch = LoadedBatch(key="incoming/bench.csv", etag='"bench"', raw=b"", frame=frame, error=None)
    policy = ValidationPolicy(max_bad_row_share=0.5)

    started = time.perf_counter()
    baseline_bad = skeleton_validator(frame.drop(columns=[ROW_NUMBER])).notna().sum()
    baseline = time.perf_counter() - started

    started = time.perf_counter()
    [result] = validate_batches([batch], policy, IngestSettings().label_aliases, None, 0.2, 0.1)
    ours = time.perf_counter() - started

    print(f"{args.rows:,} tickets")
    rate = args.rows / baseline
    print(f"  baseline (row-by-row, 3 checks): {baseline:6.2f}s  {rate:10,.0f} rows/s  bad={baseline_bad}")
    print(
        f"  project (pandera + batch checks): {ours:6.2f}s  {args.rows / ours:10,.0f} rows/s  "
        f"bad={len(result.rejected)}"
    )
    print(f"  ratio: {baseline / ours:.2f}x; target under 10 s: {'met' if ours < 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
