"""Training speed: the seed recipe vs the project's trainer, same data, model, epochs, one process.

The seed recipe pads every example to max_length 128 and trains in fp32 with random batches. The
project's trainer pads per batch, groups batches by length and uses bf16 autocast where the CPU
(or GPU) supports it. Prints samples/s of each, the ratio, and accuracy on a held-out split, for
the NLBSE'24 GitHub issues (../shared/data/nlbse24/issues_train.csv) and for short generated tickets.
Also times scoring the held-out split: Trainer.evaluate with max-length padding vs the project's
scorer. Run: `.venv/bin/python benchmarks/train_speed.py [--train 600 --test 150 --epochs 1]`.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from retrainer import LABELS
from retrainer.samples import generate_tickets
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig
from tasks.evaluate import predict_label_ids
from tasks.train import LABEL_TO_ID, fine_tune, resolve_base_model

NLBSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlbse24" / "issues_train.csv"
LABEL_MAP = {"bug": "bug", "feature": "feature_request", "question": "general_inquiry"}


def nlbse_tickets() -> pd.DataFrame:
    issues = pd.read_csv(NLBSE)
    return pd.DataFrame(
        {
            "ticket_id": [f"nlbse-{index}" for index in range(len(issues))],
            "text": (issues["title"].fillna("") + "\n" + issues["body"].fillna("")).tolist(),
            "label": issues["label"].map(LABEL_MAP).tolist(),
        }
    )


def split(tickets: pd.DataFrame, train: int, test: int, seed: int = 0):
    shuffled = tickets.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return shuffled.iloc[:train], shuffled.iloc[train : train + test]


def seed_recipe(train: pd.DataFrame, test: pd.DataFrame, epochs: float, workdir: Path):
    """The seed: padding="max_length" (128), fp32, Trainer defaults; returns (seconds, accuracy, eval s)."""
    source = resolve_base_model(PACKAGED_BASE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(LABELS))

    def encode(rows):
        data = Dataset.from_dict(
            {"text": rows["text"].tolist(), "labels": [LABEL_TO_ID[x] for x in rows["label"]]}
        )
        return data.map(
            lambda b: tokenizer(b["text"], truncation=True, padding="max_length", max_length=128),
            batched=True,
            remove_columns=["text"],
        )

    arguments = TrainingArguments(
        output_dir=str(workdir),
        learning_rate=2e-5,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        weight_decay=0.01,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=encode(train))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictions = trainer.predict(encode(test)).predictions.argmax(axis=-1)
    eval_seconds = time.perf_counter() - started
    return seconds, float(np.mean(predictions == [LABEL_TO_ID[x] for x in test["label"]])), eval_seconds


def project_trainer(train: pd.DataFrame, test: pd.DataFrame, epochs: float, workdir: Path):
    """The project's fine_tune (validation = a slice of train, as the flow does) and scorer."""
    validation = train.iloc[: max(1, len(train) // 10)]
    config = TrainingConfig(num_train_epochs=epochs)
    started = time.perf_counter()
    model_dir = fine_tune(train, validation, PACKAGED_BASE_MODEL, "main", config, workdir)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictions = predict_label_ids(model_dir, test["text"].tolist(), 128)
    eval_seconds = time.perf_counter() - started
    return (
        seconds,
        float(np.mean(np.array(predictions) == [LABEL_TO_ID[x] for x in test["label"]])),
        eval_seconds,
    )


def compare(name: str, tickets: pd.DataFrame, args) -> None:
    train, test = split(tickets, args.train, args.test)
    samples = len(train) * args.epochs
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        seed_s, seed_acc, seed_eval = seed_recipe(train, test, args.epochs, Path(first))
        ours_s, ours_acc, ours_eval = project_trainer(train, test, args.epochs, Path(second))
    print(f"{name}: {len(train)} train / {len(test)} held out, {args.epochs:g} epoch(s)")
    for label, seconds, accuracy, scoring in (
        ("seed recipe", seed_s, seed_acc, seed_eval),
        ("project", ours_s, ours_acc, ours_eval),
    ):
        print(
            f"  {label:11}: {samples / seconds:6.1f} samples/s  acc {accuracy:.3f}  scored in {scoring:.1f}s"
        )
    print(f"  training ratio {seed_s / ours_s:.2f}x, scoring ratio {seed_eval / ours_eval:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=3.0)
    args = parser.parse_args()
    compare("short generated tickets", generate_tickets(args.train + args.test, seed=11), args)
    if NLBSE.is_file():
        compare("NLBSE'24 GitHub issues", nlbse_tickets(), args)


if __name__ == "__main__":
    main()
