"""Scoring speed: the project's scorer vs the seed's way (Trainer.predict, padding to max length, fp32).

Both score the same texts with the same model in one process; prints seconds, texts/s, the ratio,
and how often the two agree on the predicted label. Run: `.venv/bin/python benchmarks/scoring_speed.py`.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from retrainer import LABELS
from retrainer.devices import cpu_supports_bf16
from retrainer.samples import generate_tickets
from retrainer.settings import PACKAGED_BASE_MODEL
from tasks.evaluate import predict_probabilities
from tasks.train import resolve_base_model

NLBSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlbse24" / "issues_train.csv"


def seed_scoring(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """The seed's approach: tokenize padded to max_length, Trainer.predict in fp32."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(LABELS))
    encoded = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, padding="max_length", max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="seed-scoring-"),
        per_device_eval_batch_size=64,
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(model=model, args=arguments).predict(encoded).predictions.argmax(axis=-1)


def measure(name: str, texts: list[str], model_dir: str, max_length: int) -> None:
    started = time.perf_counter()
    baseline = seed_scoring(model_dir, texts, max_length)
    seed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = predict_probabilities(Path(model_dir), texts, max_length).argmax(dim=-1).numpy()
    our_seconds = time.perf_counter() - started
    print(f"{name}: {len(texts)} texts, max_length {max_length}")
    seed_rate = len(texts) / seed_seconds
    print(f"  seed (Trainer.predict, max-length padding, fp32): {seed_seconds:6.2f}s  {seed_rate:7.1f}/s")
    print(
        f"  project (length-sorted batches, inference_mode{', bf16' if cpu_supports_bf16() else ''}): "
        f"{our_seconds:6.2f}s  {len(texts) / our_seconds:7.1f}/s"
    )
    print(
        f"  ratio: {seed_seconds / our_seconds:.2f}x; same label on {np.mean(baseline == ours):.1%} of texts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = resolve_base_model(PACKAGED_BASE_MODEL)
    # Both scorers load the same folder; the classifier head is fresh but seeded identically per load.
    tickets = generate_tickets(args.count, seed=5)["text"].tolist()
    measure("generated tickets", tickets, _with_head(model_dir), 128)
    if NLBSE.is_file():
        issues = pd.read_csv(NLBSE).head(args.count)
        measure(
            "NLBSE'24 GitHub issues",
            (issues["title"] + "\n" + issues["body"].fillna("")).tolist(),
            _with_head(model_dir),
            128,
        )


def _with_head(model_dir: str) -> str:
    """Save the base model with a fixed (seeded) classification head, so both scorers use one model."""
    target = Path(tempfile.mkdtemp(prefix="scoring-bench-model-"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return str(target)


if __name__ == "__main__":
    main()
