"""What the benchmarks share: the NLBSE'24 issues and the seed project's own training and scoring code.

The seed pads every text to max_length, trains in fp32 with random batches and the Trainer's
defaults, and scores with `Trainer.predict`; kept here once so every benchmark compares against the
same baseline.
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from retrainer.settings import TrainingConfig
from retrainer.text import join_title
from tasks.train import LABEL_TO_ID

NLBSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlbse24" / "issues_train.csv"
LABEL_MAP = {"bug": "bug", "feature": "feature_request", "question": "general_inquiry"}


def load_issues(path: Path = NLBSE) -> pd.DataFrame:
    """The NLBSE'24 issues as tickets: ticket_id, repo, text (title first), label (the product's names)."""
    issues = pd.read_csv(path)
    return pd.DataFrame(
        {
            "ticket_id": [f"nlbse-{index}" for index in range(len(issues))],
            "repo": issues["repo"],
            "text": [join_title(t, b) for t, b in zip(issues["title"], issues["body"], strict=True)],
            "label": issues["label"].map(LABEL_MAP),
        }
    )


def seed_encode(tokenizer, texts: list[str], labels: list[str] | None, max_length: int) -> Dataset:
    """The seed's tokenization: every text padded (or cut) to exactly `max_length` tokens."""
    columns = {"text": texts} | ({"labels": [LABEL_TO_ID[label] for label in labels]} if labels else {})
    return Dataset.from_dict(columns).map(
        lambda batch: tokenizer(batch["text"], truncation=True, padding="max_length", max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def seed_trainer(model, output_dir: Path, epochs: float = 3.0, train_dataset=None) -> Trainer:
    """The seed's Trainer: lr 2e-5, batch 16 (64 to score), weight decay 0.01, fp32, no checkpoints."""
    arguments = TrainingArguments(
        output_dir=str(output_dir),
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
    return Trainer(model=model, args=arguments, train_dataset=train_dataset)


def seed_predict(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """The seed's scoring: `Trainer.predict` on max-length-padded texts; the predicted label ids."""
    with tempfile.TemporaryDirectory(prefix="seed-scoring-") as scratch:
        trainer = seed_trainer(model, Path(scratch))
        return trainer.predict(seed_encode(tokenizer, texts, None, max_length)).predictions.argmax(axis=-1)


def config_with(overrides: str) -> TrainingConfig:
    """The tuned training defaults with ``key=value,...`` overrides (as the environment would give them)."""
    values = dict(item.split("=", 1) for item in overrides.split(",") if item)
    return TrainingConfig.model_validate({**TrainingConfig().model_dump(), **values})
