"""Model quality on real GitHub issues: the project's training code, tuned defaults vs the reference recipe.

Data: the NLBSE'24 issues_train.csv (1,500 issues, 5 repositories x 3 labels x 100), `--data PATH`
(default ../shared/data/nlbse24/issues_train.csv; where to get it: benchmarks/README.md).
A fixed split stratified by repository and label holds out 20% (300 issues) for the test; 10% of the
rest (also stratified) picks the best epoch, as the flow's validation split does. With `--folds K`,
every issue is tested once instead (K stratified folds, each trained on the others): slower, but the
estimate rests on all 1,500 issues and shows its spread, which one split of 300 cannot. Every
configuration trains with `retrainer.core.training.fine_tune` and is scored with
`retrainer.core.scoring` (the product's own code), so text preparation and truncation are the
product's too.

Prints accuracy, macro-F1, per-repository macro-F1 and training time per configuration, and appends
each result as a JSON line to `--results` (so a sweep can run in the background and be read later).

    .venv/bin/python benchmarks/quality.py                       # reference recipe and the tuned defaults
    .venv/bin/python benchmarks/quality.py --config lr1e-4:learning_rate=1e-4,num_train_epochs=5
    .venv/bin/python benchmarks/quality.py --folds 5 --config tuned   # 5-fold cross-validation
    .venv/bin/python benchmarks/quality.py --config large --base-model PATH/all-mpnet-base-v2  # a GPU's
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.core.devices import describe_device
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.scoring import evaluation_report, load_lexical_half, predict_probabilities
from retrainer.core.training import TrainingSpec, fine_tune
from retrainer.settings import (
    TRAINING_PRESETS,
    TrainingConfig,
    preset_base_model,
    renamed_preset_message,
)

from baseline import NLBSE, config_with, load_issues

TEST_SHARE = 0.2
VALIDATION_SHARE = 0.1
SPLIT_SEED = 2024


def stratified_split(rows: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): `share` of every repository x label group held out, chosen at random by `seed`."""
    held_out = rows.groupby(["repo", "label"], group_keys=False).sample(frac=share, random_state=seed).index
    return rows.drop(index=held_out), rows.loc[held_out]


def fixed_split(issues: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test): the fixed split, stratified by repository and label."""
    rest, test = stratified_split(issues, TEST_SHARE, SPLIT_SEED)
    train, validation = stratified_split(rest, VALIDATION_SHARE, SPLIT_SEED)
    return train, validation, test


def stratified_folds(rows: pd.DataFrame, folds: int, seed: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(rest, test) per fold: every repository x label group shuffled by `seed` and dealt into `folds`
    parts, so each issue is tested exactly once and every test fold has the same mix."""
    fold_of = pd.Series(0, index=rows.index)
    for _, group in rows.groupby(["repo", "label"]):
        shuffled = group.sample(frac=1.0, random_state=seed).index
        fold_of[shuffled] = np.arange(len(shuffled)) % folds
    return [(rows[fold_of != fold], rows[fold_of == fold]) for fold in range(folds)]


def scores(test: pd.DataFrame, predicted: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-label F1 and per-repository macro-F1 of label ids predicted for `test`."""
    references = np.array([LABEL_TO_ID[label] for label in test["label"]])
    overall = evaluation_report(predicted.tolist(), references.tolist())
    return {
        "accuracy": overall.accuracy,
        "macro_f1": overall.macro_f1,
        "f1": overall.f1,
        "per_repo_macro_f1": {
            repo: evaluation_report(predicted[mask].tolist(), references[mask].tolist()).macro_f1
            for repo in sorted(test["repo"].unique())
            for mask in [(test["repo"] == repo).to_numpy()]
        },
    }


def measure(
    name: str, config: TrainingConfig, train, validation, test, workdir: Path, base: tuple[str, str]
) -> dict:
    """Train one configuration from `base` (model, revision) and score it on the test split."""
    started = time.perf_counter()
    model_dir = fine_tune(train, validation, TrainingSpec(*base, config), workdir)
    seconds = time.perf_counter() - started
    texts = test["text"].tolist()
    # The two halves apart (scored once each), then blended as predict_probabilities blends them.
    parts = {"transformer": predict_probabilities(model_dir, texts, config.max_length, lexical=False)}
    lexical = load_lexical_half(model_dir)
    if lexical is not None:
        parts["lexical"] = lexical.probabilities(texts)
    blended = lexical.blend(parts["transformer"], parts["lexical"]) if lexical else parts["transformer"]
    predicted = blended.argmax(dim=-1).numpy()
    return {
        "name": name,
        **scores(test, predicted),
        "predictions": dict(zip(test["ticket_id"], (LABELS[index] for index in predicted), strict=True)),
        "part_probabilities": {  # each half of a blended model alone, to score it apart
            part: dict(zip(test["ticket_id"], np.round(p.numpy(), 4).tolist(), strict=True))
            for part, p in parts.items()
        },
        # the temperature the blend softens the transformer's probabilities with: blends at other
        # weights can be computed from the parts afterwards (lexical.blend_probabilities)
        "transformer_temperature": lexical.transformer_temperature if lexical else None,
        "train_seconds": seconds,
        "train_samples_per_s": len(train) * config.num_train_epochs / seconds,
        "config": config.model_dump(),
        "base_model": list(base),
        "device": describe_device(),
    }


def cross_validate(
    name: str, config: TrainingConfig, issues: pd.DataFrame, folds: int, base: tuple[str, str]
) -> dict:
    """`measure` on every fold; the summary scores all out-of-fold predictions together."""
    per_fold = []
    for fold, (rest, test) in enumerate(stratified_folds(issues, folds, SPLIT_SEED)):
        train, validation = stratified_split(rest, VALIDATION_SHARE, SPLIT_SEED)
        with tempfile.TemporaryDirectory() as workdir:
            per_fold.append(
                measure(f"{name}/fold{fold}", config, train, validation, test, Path(workdir), base)
            )
        print_table(per_fold[-1:])
    predictions = {ticket: label for result in per_fold for ticket, label in result["predictions"].items()}
    scored = issues[issues["ticket_id"].isin(predictions)]
    predicted = np.array([LABEL_TO_ID[predictions[ticket]] for ticket in scored["ticket_id"]])
    part_probabilities = {
        part: {ticket: p for result in per_fold for ticket, p in result["part_probabilities"][part].items()}
        for part in per_fold[0]["part_probabilities"]
    }
    fold_f1 = np.array([result["macro_f1"] for result in per_fold])
    seconds = sum(result["train_seconds"] for result in per_fold)
    return {
        "name": name,
        "folds": folds,
        **scores(scored, predicted),
        "part_macro_f1": {
            part: scores(scored, np.array([np.argmax(p[t]) for t in scored["ticket_id"]]))["macro_f1"]
            for part, p in part_probabilities.items()
        },
        "part_probabilities": part_probabilities,
        "fold_macro_f1": fold_f1.tolist(),
        "fold_macro_f1_std": float(fold_f1.std(ddof=1)),
        "predictions": predictions,
        "train_seconds": seconds / folds,
        "train_samples_per_s": sum(r["train_samples_per_s"] for r in per_fold) / folds,
        "config": config.model_dump(),
        "base_model": list(base),
        "device": describe_device(),
    }


def parse_config(spec: str) -> tuple[str, TrainingConfig]:
    """``name`` (a preset) or ``name:key=value,...`` (the tuned defaults with overrides)."""
    name, _, overrides = spec.partition(":")
    if not overrides:
        if name not in TRAINING_PRESETS:
            reason = renamed_preset_message(name) or f"no preset {name!r}"
            raise SystemExit(
                f"quality.py: --config {spec}: {reason} (presets: {', '.join(sorted(TRAINING_PRESETS))})"
            )
        return name, TRAINING_PRESETS[name]
    return name, config_with(overrides)


def base_model_of(preset: str, given: str | None, revision: str) -> tuple[str, str]:
    """(model, revision) a configuration trains: `--base-model`, its preset's own, or the packaged one."""
    return (given, revision) if given else preset_base_model(preset)


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
    parser.add_argument("--data", type=Path, default=NLBSE, help="the NLBSE'24 issues_train.csv")
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation instead of one split")
    parser.add_argument(
        "--base-model",
        help="hub id or local folder to fine-tune (default: the preset's own base model, else the packaged"
        " one); e.g. a local copy of the `large` preset's MPNet where the hub is not reachable",
    )
    parser.add_argument("--revision", default="main", help="hub revision of --base-model")
    args = parser.parse_args()
    issues = load_issues(args.data)
    if args.folds:
        print(f"{args.folds}-fold cross-validation over {len(issues)} issues")
    else:
        train, validation, test = fixed_split(issues)
        print(f"{len(train)} train / {len(validation)} validation / {len(test)} test issues")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.config or ["reference", "tuned"]:
        name, config = parse_config(spec)
        base = base_model_of(name, args.base_model, args.revision)
        if args.folds:
            result = cross_validate(name, config, issues, args.folds, base)
        else:
            with tempfile.TemporaryDirectory() as workdir:
                result = measure(name, config, train, validation, test, Path(workdir), base)
        results.append(result)
        with args.results.open("a") as out:
            out.write(json.dumps(result) + "\n")
        print_table(results[-1:])
    print()
    print_table(results)
    labels = ", ".join(LABELS)
    print(f"(macro-F1 over {labels}; per-repository columns are macro-F1 on that repository's test issues)")
    for result in results:
        if "folds" in result:
            spread = ", ".join(f"{f1:.3f}" for f1 in result["fold_macro_f1"])
            scored = len(result["predictions"])
            parts = ", ".join(f"{part} alone {f1:.3f}" for part, f1 in result["part_macro_f1"].items())
            print(
                f"{result['name']}: out-of-fold macro-F1 {result['macro_f1']:.3f} over {scored} issues;"
                f" per fold {spread} (std {result['fold_macro_f1_std']:.3f}); {parts}"
            )


if __name__ == "__main__":
    main()
