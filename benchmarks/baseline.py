"""What the benchmarks share: the NLBSE'24 issues and the seed project's own training and scoring code.

The seed pads every text to max_length, trains in fp32 with random batches and the Trainer's
defaults (evaluating and saving each epoch, best epoch by accuracy), and scores with
`Trainer.predict`; kept here once so every benchmark compares against the same baseline.
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from retrainer.core.labels import LABEL_TO_ID
from retrainer.core.text import join_title
from retrainer.core.training import compute_accuracy
from retrainer.settings import TrainingConfig

NLBSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nlbse24" / "issues_train.csv"
"""The default of `--data`: where this project's machines keep the NLBSE'24 issues, beside the checkout."""
NLBSE_SOURCE = "https://github.com/nlbse2024/issue-report-classification"
SEED = 42
"""The seed recipe's random seed."""
LABEL_MAP = {"bug": "bug", "feature": "feature_request", "question": "general_inquiry"}


def load_issues(path: Path = NLBSE, option: str = "--data") -> pd.DataFrame:
    """The NLBSE'24 issues as tickets: ticket_id, repo, text (title first), label (the product's names).
    A missing file stops the benchmark with where to get it (`option` passes another path)."""
    if not path.is_file():
        raise SystemExit(
            f"{path}: no such file. The NLBSE'24 issues are not part of this repository: get "
            f"issues_train.csv from {NLBSE_SOURCE} and pass its path with {option} PATH"
        )
    issues = pd.read_csv(path)
    return pd.DataFrame(
        {
            "ticket_id": [f"nlbse-{index}" for index in range(len(issues))],
            "repo": issues["repo"],
            "text": [join_title(t, b) for t, b in zip(issues["title"], issues["body"], strict=True)],
            "label": issues["label"].map(LABEL_MAP),
        }
    )


def issues_if_present(path: Path | None) -> pd.DataFrame | None:
    """For benchmarks whose issue cases are optional: the issues at `path` (an error when missing), else
    at the default place, else None with a note saying how to add them."""
    if path is None and not NLBSE.is_file():
        print(f"skipping the NLBSE'24 issues: {NLBSE} is absent (get it from {NLBSE_SOURCE}; --data PATH)")
        return None
    return load_issues(path or NLBSE)


def seed_encode(tokenizer, texts: list[str], labels: list[str] | None, max_length: int) -> Dataset:
    """The seed's tokenization: every text padded (or cut) to exactly `max_length` tokens."""
    columns = {"text": texts} | ({"labels": [LABEL_TO_ID[label] for label in labels]} if labels else {})
    return Dataset.from_dict(columns).map(
        lambda batch: tokenizer(batch["text"], truncation=True, padding="max_length", max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def seed_trainer(
    model, output_dir: Path, epochs: float = 3.0, train_dataset=None, validation_dataset=None
) -> Trainer:
    """The seed's Trainer: lr 2e-5, batch 16 (64 to score), weight decay 0.01, fp32.

    With `validation_dataset`, as the seed trained: evaluate and save a checkpoint each epoch and
    load the best epoch by accuracy at the end.
    """
    per_epoch = (
        {
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "load_best_model_at_end": True,
            "metric_for_best_model": "accuracy",
            "save_total_limit": 2,
            "save_only_model": True,
        }
        if validation_dataset is not None
        else {"save_strategy": "no"}
    )
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=2e-5,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        weight_decay=0.01,
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        **per_epoch,
    )
    return Trainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        compute_metrics=compute_accuracy if validation_dataset is not None else None,
    )


def seed_predict(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """The seed's scoring: `Trainer.predict` on max-length-padded texts; the predicted label ids."""
    with tempfile.TemporaryDirectory(prefix="seed-scoring-") as scratch:
        trainer = seed_trainer(model, Path(scratch))
        return trainer.predict(seed_encode(tokenizer, texts, None, max_length)).predictions.argmax(axis=-1)


def random_copy(base_model: str, target: Path, seed: int = 0) -> str:
    """`base_model`'s architecture and tokenizer with random weights, saved (safetensors) to `target`.

    Speed does not depend on the weights, so a host that cannot receive them (the GPU host takes at
    most 64 MiB of files per run; MiniLM-L6's fp32 weights are 91 MB) measures with this copy; only the
    config and tokenizer files travel.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer, set_seed

    from retrainer.core.base_models import resolve_base_model

    source = resolve_base_model(base_model)
    set_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return str(target)


def config_with(overrides: str) -> TrainingConfig:
    """The tuned training defaults with ``key=value,...`` overrides (as the environment would give them)."""
    values = dict(item.split("=", 1) for item in overrides.split(",") if item)
    return TrainingConfig.model_validate({**TrainingConfig().model_dump(), **values})
