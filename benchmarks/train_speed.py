"""Training speed: the seed recipe vs the project's trainer, same data, model, epochs, one process.

The seed recipe pads every example to max_length 128 and trains in fp32 with random batches,
evaluating and saving each epoch and keeping the best (as the seed did). The project's trainer runs
its `tuned` defaults at the same 128 tokens (or `--set` overrides): cleaned text, per-batch padding,
bf16 autocast where the CPU (or GPU) supports it, the same per-epoch evaluation on the same
validation slice, the mean of the last epochs' weights. Both are timed from loading the base model
to the model they publish, loaded. Prints samples/s of each,
the ratio, and accuracy on a held-out split, for the NLBSE'24 GitHub issues (`--data PATH`, see
benchmarks/README.md; skipped when absent) and for short generated tickets. Also times scoring the
held-out split: the seed's Trainer.predict with max-length padding vs the project's scorer.
Run: `.venv/bin/python benchmarks/train_speed.py [--train 600 --test 200 --epochs 3]`.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from app.samples import generate_tickets
from retrainer.core.base_models import resolve_base_model
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.scoring import predict_label_ids
from retrainer.core.training import TrainingSpec, fine_tune
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

from baseline import SEED, config_with, issues_if_present, seed_encode, seed_predict, seed_trainer


def split(tickets: pd.DataFrame, train: int, test: int, seed: int = 0):
    shuffled = tickets.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return shuffled.iloc[:train], shuffled.iloc[train : train + test]


def validation_slice(train: pd.DataFrame) -> pd.DataFrame:
    """The rows both recipes pick their best epoch on (a slice of train, as the flow's validation is)."""
    return train.iloc[: max(1, len(train) // 10)]


def seed_recipe(
    train: pd.DataFrame,
    test: pd.DataFrame,
    epochs: float,
    workdir: Path,
    base_model: str = PACKAGED_BASE_MODEL,
):
    """The seed's training and scoring; returns (train seconds, test accuracy, scoring seconds).

    Timed like the project's `fine_tune`: from loading the base model to the model it publishes.
    """
    started = time.perf_counter()
    source = resolve_base_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    set_seed(SEED)  # the new classification head, as the project's fine_tune seeds it
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(LABELS))
    validation = validation_slice(train)
    trainer = seed_trainer(
        model,
        workdir,
        epochs,
        train_dataset=seed_encode(tokenizer, train["text"].tolist(), train["label"].tolist(), 128),
        validation_dataset=seed_encode(
            tokenizer, validation["text"].tolist(), validation["label"].tolist(), 128
        ),
    )
    trainer.train()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictions = seed_predict(model, tokenizer, test["text"].tolist(), 128)
    eval_seconds = time.perf_counter() - started
    return seconds, float(np.mean(predictions == [LABEL_TO_ID[x] for x in test["label"]])), eval_seconds


def project_trainer(
    train: pd.DataFrame,
    test: pd.DataFrame,
    epochs: float,
    workdir: Path,
    config: TrainingConfig,
    base_model: str = PACKAGED_BASE_MODEL,
):
    """The project's fine_tune (validation = a slice of train, as the flow does) and scorer."""
    validation = validation_slice(train)
    config = config.model_copy(update={"num_train_epochs": epochs})
    started = time.perf_counter()
    model_dir = fine_tune(train, validation, TrainingSpec(base_model, "main", config), workdir)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictions = predict_label_ids(model_dir, test["text"].tolist(), config.max_length)
    eval_seconds = time.perf_counter() - started
    return (
        seconds,
        float(np.mean(np.array(predictions) == [LABEL_TO_ID[x] for x in test["label"]])),
        eval_seconds,
    )


def compare(name: str, tickets: pd.DataFrame, args, base_model: str = PACKAGED_BASE_MODEL) -> dict:
    """Train and score both ways on the same split; prints and returns their figures."""
    train, test = split(tickets, args.train, args.test)
    samples = len(train) * args.epochs
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        seed_s, seed_acc, seed_eval = seed_recipe(train, test, args.epochs, Path(first), base_model)
        ours_s, ours_acc, ours_eval = project_trainer(
            train, test, args.epochs, Path(second), args.config, base_model
        )
    print(f"{name}: {len(train)} train / {len(test)} held out, {args.epochs:g} epoch(s)")
    for label, seconds, accuracy, scoring in (
        ("seed recipe", seed_s, seed_acc, seed_eval),
        ("project", ours_s, ours_acc, ours_eval),
    ):
        print(
            f"  {label:11}: {samples / seconds:6.1f} samples/s  acc {accuracy:.3f}  scored in {scoring:.1f}s"
        )
    print(f"  training ratio {seed_s / ours_s:.2f}x, scoring ratio {seed_eval / ours_eval:.2f}x")
    return {
        "name": name,
        "train": len(train),
        "epochs": args.epochs,
        "seed": {"seconds": seed_s, "samples_per_s": samples / seed_s, "accuracy": seed_acc},
        "project": {"seconds": ours_s, "samples_per_s": samples / ours_s, "accuracy": ours_acc},
        "training_ratio": seed_s / ours_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument(
        "--set",
        default="",
        help="project config overrides, key=value,... (default: the tuned preset at 128 tokens)",
    )
    parser.add_argument("--datasets", default="short,nlbse", help="which of short,nlbse to run")
    parser.add_argument("--data", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
    args = parser.parse_args()
    args.config = config_with(f"max_length=128,{args.set}".rstrip(","))
    print(f"project config: {args.config}")
    if "short" in args.datasets:
        compare("short generated tickets", generate_tickets(args.train + args.test, seed=11), args)
    if "nlbse" in args.datasets and (issues := issues_if_present(args.data)) is not None:
        compare("NLBSE'24 GitHub issues", issues, args)


if __name__ == "__main__":
    main()
