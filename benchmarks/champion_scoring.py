"""The champion's nightly scoring: every eval ticket (fresh) vs only those new to it (known predictions).

A night's eval split holds `--eval` tickets, `--new` of them arrived tonight; the champion (the packaged
MiniLM with a seeded head, its input recipe and a lexical half, as published) scored the others on
earlier nights, and those predictions are in the store (`tasks.known_predictions`, a local folder or,
with `--s3`, a local SeaweedFS). Both ways run in this process, alternating `--rounds` times, through
the product's task functions (`tasks.evaluate.score_on_eval`): the fresh way scores every eval ticket;
the reusing way reads the stored predictions and scores the new ones. Prints the seconds of each, their
ratio, and whether the two evaluations are the same (they must be: the gate decides on them).

    .venv/bin/python benchmarks/champion_scoring.py [--eval 5000 --new 100 --rounds 2 --s3]
"""

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
from scoring_speed import with_head, with_lexical_half

from app.samples import generate_tickets
from app.seaweed import LocalS3
from retrainer.core.base_models import resolve_base_model
from retrainer.settings import PACKAGED_BASE_MODEL, S3Settings, TrainingConfig
from retrainer.storage import open_store
from tasks.evaluate import score_on_eval
from tasks.known_predictions import read_known_predictions, record_predictions

S3_KEYS = ("bench", "bench-secret")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval", type=int, default=5000, help="eval tickets tonight")
    parser.add_argument("--new", type=int, default=100, help="of them, new tonight")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="a local SeaweedFS instead of a folder store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="champion-scoring-") as scratch_name, ExitStack() as stack:
        scratch = Path(scratch_name)
        if args.s3:
            s3 = stack.enter_context(LocalS3(scratch / "s3", *S3_KEYS, scratch / "seaweedfs.log"))
            store = open_store(S3Settings(endpoint_url=s3.endpoint_url, bucket="bench"), credentials=S3_KEYS)
        else:
            store = open_store(S3Settings(endpoint_url=(scratch / "objects").as_uri(), bucket="bench"))
        store.ensure_bucket()
        run(args, scratch, store)


def run(args, scratch: Path, store) -> None:
    model_dir = Path(with_head(resolve_base_model(PACKAGED_BASE_MODEL), scratch / "head"))
    model_dir = Path(with_lexical_half(str(model_dir), scratch / "published", generate_tickets(600, seed=6)))
    TrainingConfig().input_recipe().save(model_dir)  # cleaning, masking, head+tail: as a run publishes
    tonight = generate_tickets(args.eval, seed=21)[["ticket_id", "text", "label"]]
    earlier = tonight.iloc[args.new :]
    flags = [False] * len(tonight)
    started = time.perf_counter()
    record_predictions(
        store,
        "m-champion",
        "earlier-nights",
        score_on_eval(
            model_dir, earlier, 128, [False] * len(earlier), [False] * len(earlier)
        ).new_predictions,
    )
    print(f"{len(earlier)} earlier eval tickets scored and stored in {time.perf_counter() - started:.1f} s")
    timings: dict[str, list[float]] = {"fresh": [], "reusing": []}
    evaluations = {}
    for _ in range(args.rounds):
        started = time.perf_counter()
        evaluations["fresh"] = score_on_eval(model_dir, tonight, 128, flags, flags).evaluation
        timings["fresh"].append(time.perf_counter() - started)
        started = time.perf_counter()
        known = read_known_predictions(store, "m-champion")
        reusing = score_on_eval(model_dir, tonight, 128, flags, flags, known)
        evaluations["reusing"] = reusing.evaluation
        timings["reusing"].append(time.perf_counter() - started)
    fresh, reused = min(timings["fresh"]), min(timings["reusing"])
    print(
        pd.DataFrame(
            {
                "way": ["fresh: every eval ticket", "reusing: read stored, score new"],
                "scored": [len(tonight), reusing.scored],
                "seconds (best of rounds)": [round(fresh, 2), round(reused, 2)],
            }
        ).to_string(index=False)
    )
    same = evaluations["fresh"] == evaluations["reusing"]
    print(f"ratio fresh/reusing: {fresh / reused:.1f}x; the two evaluations are the same: {same}")


if __name__ == "__main__":
    main()
