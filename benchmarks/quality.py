"""Model quality on real GitHub issues: the project's training code, tuned defaults vs the seed recipe.

Data: ../shared/data/nlbse24/issues_train.csv (1,500 issues, 5 repositories x 3 labels x 100).
A fixed split stratified by repository and label holds out 20% (300 issues) for the test; 10% of the
rest (also stratified) picks the best epoch, as the flow's validation split does. Every configuration
trains with `tasks.train.fine_tune` and is scored with `tasks.evaluate` (the product's own code), so
text preparation and truncation are the product's too.

Prints accuracy, macro-F1, per-repository macro-F1 and training time per configuration, and appends
each result as a JSON line to `--results` (so a sweep can run in the background and be read later).

    .venv/bin/python benchmarks/quality.py                       # seed recipe and the tuned defaults
    .venv/bin/python benchmarks/quality.py --config lr1e-4:learning_rate=1e-4,num_train_epochs=5
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer import LABELS
from retrainer.devices import describe_device
from retrainer.settings import PACKAGED_BASE_MODEL, TRAINING_PRESETS, TrainingConfig
from tasks.evaluate import evaluation_report, predict_label_ids
from tasks.train import LABEL_TO_ID, fine_tune

from baseline import NLBSE, config_with, load_issues

TEST_SHARE = 0.2
VALIDATION_SHARE = 0.1
SPLIT_SEED = 2024


def stratified_split(rows: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): `share` of every repository x label group held out, chosen at random by `seed`."""
    held_out = rows.groupby(["repo", "label"], group_keys=False).sample(frac=share, random_state=seed).index
    return rows.drop(index=held_out), rows.loc[held_out]


def measure(name: str, config: TrainingConfig, train, validation, test, workdir: Path) -> dict:
    """Train one configuration and score it on the test split."""
    started = time.perf_counter()
    model_dir = fine_tune(train, validation, PACKAGED_BASE_MODEL, "main", config, workdir)
    seconds = time.perf_counter() - started
    predicted = np.array(predict_label_ids(model_dir, test["text"].tolist(), config.max_length))
    references = np.array([LABEL_TO_ID[label] for label in test["label"]])
    overall = evaluation_report(predicted.tolist(), references.tolist())
    per_repo = {
        repo: evaluation_report(predicted[mask].tolist(), references[mask].tolist()).macro_f1
        for repo in sorted(test["repo"].unique())
        for mask in [(test["repo"] == repo).to_numpy()]
    }
    return {
        "name": name,
        "accuracy": overall.accuracy,
        "macro_f1": overall.macro_f1,
        "f1": overall.f1,
        "per_repo_macro_f1": per_repo,
        "train_seconds": seconds,
        "train_samples_per_s": len(train) * config.num_train_epochs / seconds,
        "config": config.model_dump(),
        "device": describe_device(),
    }


def parse_config(spec: str) -> tuple[str, TrainingConfig]:
    """``name`` (a preset) or ``name:key=value,...`` (the tuned defaults with overrides)."""
    name, _, overrides = spec.partition(":")
    if not overrides:
        return name, TRAINING_PRESETS[name]
    return name, config_with(overrides)


def print_table(results: list[dict]) -> None:
    repos = list(results[0]["per_repo_macro_f1"])
    print(
        f"{'configuration':24} {'acc':>6} {'macroF1':>7} "
        + " ".join(f"{r.split('/')[-1][:9]:>9}" for r in repos)
        + f" {'train s':>8} {'smp/s':>6}"
    )
    for result in results:
        per_repo = " ".join(f"{result['per_repo_macro_f1'][r]:9.3f}" for r in repos)
        print(
            f"{result['name']:24} {result['accuracy']:6.3f} {result['macro_f1']:7.3f} {per_repo}"
            f" {result['train_seconds']:8.0f} {result['train_samples_per_s']:6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", help="preset name or name:key=value,... (repeatable)")
    parser.add_argument("--results", type=Path, default=Path(".bench/quality.jsonl"))
    parser.add_argument("--data", type=Path, default=NLBSE)
    args = parser.parse_args()
    rest, test = stratified_split(load_issues(args.data), TEST_SHARE, SPLIT_SEED)
    train, validation = stratified_split(rest, VALIDATION_SHARE, SPLIT_SEED)
    print(f"{len(train)} train / {len(validation)} validation / {len(test)} test issues")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.config or ["seed", "tuned"]:
        name, config = parse_config(spec)
        with tempfile.TemporaryDirectory() as workdir:
            result = measure(name, config, train, validation, test, Path(workdir))
        results.append(result)
        with args.results.open("a") as out:
            out.write(json.dumps(result) + "\n")
        print_table(results[-1:])
    print()
    print_table(results)
    labels = ", ".join(LABELS)
    print(f"(macro-F1 over {labels}; per-repository columns are macro-F1 on that repository's test issues)")


if __name__ == "__main__":
    main()
