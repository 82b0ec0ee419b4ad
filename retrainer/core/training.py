"""Fine-tune: train a challenger from the base model on the curated train split with the Trainer.

Each epoch is evaluated on the *validation* split, never on the gate's eval split. The published
weights are the mean of the last epochs (or the best epoch by validation accuracy), so the gate
compares champion and challenger on data neither of them was selected on. Beside them goes the
model's lexical half (TF-IDF + logistic regression, `retrainer.core.lexical`), blended in at scoring.

This module holds what a fine-tune is given (`TrainingSpec`, `RunOptions`), `fine_tune` as its steps,
and what it records (``training.json``). The steps' parts live by concern beside it: the base model
(`core.base_models`), the Trainer's arguments on this hardware (`core.trainer_arguments`), checkpoints
and their averaging (`core.checkpoints`), tokenized splits and their cache (`core.tokenized_cache`),
calibration (`core.calibration`), the lexical half (`core.lexical`) and the phase timings
(`core.phase_clock`). Whether a run trains in full or from the champion is decided before, by
`core.training_plan`.

Nothing here knows Prefect or S3: checkpoints outlive the machine through the `Checkpoints` a caller
passes (tasks/checkpoints.py keeps them in S3), progress is seen through the callbacks it passes, and
warnings go to the standard loggers of `retrainer.core` (tasks/train.py forwards them into the Prefect
run log).
"""

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    set_seed,
)

from retrainer.core.base_models import check_token_budget, model_config, resolve_base_model
from retrainer.core.calibration import calibrated_temperature
from retrainer.core.checkpoints import (
    Checkpoints,
    CheckpointWrittenByEveryProcess,
    average_last_checkpoints,
    checkpoint_step,
    resumable_checkpoint,
)
from retrainer.core.devices import describe_device
from retrainer.core.lexical import LexicalFit, fit_lexical_half, save_lexical_half
from retrainer.core.metrics import load_metric
from retrainer.core.phase_clock import PhaseClock
from retrainer.core.tokenized_cache import tokenized_splits
from retrainer.core.trainer_arguments import process_group, training_arguments
from retrainer.core.training_plan import TrainingPlan
from retrainer.provenance import library_versions
from retrainer.settings import TrainingConfig

TRAINING_RECORD = "training.json"
"""What `fine_tune` writes beside the weights about how they were trained."""


@dataclass(frozen=True)
class TrainingSpec:
    """What to train: `base_model` (hub id, local folder or the packaged model) at `revision`, fine-tuned
    as `config` says. With the rows, it decides the published weights."""

    base_model: str
    revision: str
    config: TrainingConfig
    warm_start: Path | None = None
    """A trained model of this product (the champion) to start from instead of `base_model`'s weights:
    its classification head and tokenizer are kept (`retrainer.core.training_plan`)."""
    plan: TrainingPlan | None = None
    """Why the run trains this way (full or incremental); recorded in ``training.json`` when given."""

    def on_device(self, cuda: bool) -> "TrainingSpec":
        """The spec as it trains on this hardware (`TrainingConfig.for_device`: on CUDA, larger batches)."""
        return replace(self, config=self.config.for_device(cuda))


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, beside what it trains.

    `checkpoints`: every checkpoint is kept there and a run resumes from the latest one kept.
    `tokenized_cache` (a folder per dataset version): tokenized splits are reused across runs; the
    folders of other versions beside it are deleted once idle (`prune_tokenized_caches`).
    `callbacks`: more Trainer callbacks (after the checkpoints' own), e.g. to report progress.
    """

    checkpoints: Checkpoints | None = None
    tokenized_cache: Path | None = None
    callbacks: tuple[TrainerCallback, ...] = ()


def fine_tune(
    train_rows: pd.DataFrame,
    validation_rows: pd.DataFrame,
    spec: TrainingSpec,
    output_dir: Path,
    *,
    options: RunOptions | None = None,
    lexical_rows: pd.DataFrame | None = None,
) -> Path:
    """Fine-tune `spec.base_model` (or `spec.warm_start`); save the best epoch (or, with
    `config.average_share`, the mean weights of the last epochs) as safetensors with the tokenizer to
    ``output_dir/model``, and with `config.lexical_weight` the lexical half fitted on `lexical_rows`
    (default: the train and validation rows; an incremental run passes every curated ticket, as the
    lexical half starts from nothing).

    The recipe trains as `TrainingConfig.for_device` says for this hardware (on CUDA: larger batches),
    applied here, once, where the device is known. ``model/training.json`` records the step it resumed
    from, the steps averaged, the seed, the device with the batch size and learning rate it trained with,
    the processes, the lexical half, the seconds of each phase (`PhaseClock`), the library versions, the
    plan and the rows trained and validated on.

    Several processes (PyTorch DDP, one per GPU; tasks/train_ddp.py launches them with torchrun) each
    run this same function once they joined their process group: the Trainer trains on every process,
    each on its share of every batch, and only the first one fits the lexical half and writes
    ``output_dir/model``.
    """
    options, clock = options or RunOptions(), PhaseClock()
    spec = spec.on_device(torch.cuda.is_available())
    splits = (train_rows, validation_rows)
    # The lexical half selects nothing on the validation split, so it learns from both. On a GPU it is
    # fitted on the CPU while the GPU trains; on a CPU it would take cores from training, so it waits.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lexical-half") as background:
        lexical_fit = _start_lexical_fit(background, splits, lexical_rows, spec.config, clock)
        trainer, resume_from = _prepared_trainer(splits, spec, output_dir / "checkpoints", options, clock)
        with clock.phase("train_loop"):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        model_dir, averaged = _save_trained(trainer, spec.config, output_dir, clock)
        temperature = _calibrate(trainer, spec.config, clock)
        lexical = save_lexical_half(_wait(lexical_fit, clock, "lexical_fit"), model_dir, temperature)
    if trainer.is_world_process_zero():
        record = _training_record(trainer, spec, splits, clock, resume_from, averaged, lexical)
        (model_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    return model_dir


def training_record(model_dir: Path) -> dict:
    """What `fine_tune` recorded about a model (``training.json``; empty for a model without one)."""
    path = model_dir / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def compute_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy of the Trainer's predictions, through the project's local `evaluate` module."""
    predicted = np.argmax(prediction.predictions, axis=-1)
    return load_metric("accuracy").compute(predictions=predicted, references=prediction.label_ids)


def _start_lexical_fit(
    background: ThreadPoolExecutor,
    splits: tuple[pd.DataFrame, pd.DataFrame],
    lexical_rows: pd.DataFrame | None,
    config: TrainingConfig,
    clock: PhaseClock,
) -> Future:
    """Fit the lexical half in `background` on `lexical_rows` (default: both splits); without CUDA, wait
    for it here. Only the first process fits one (the others publish nothing)."""
    rows = pd.concat(splits) if lexical_rows is None else lexical_rows
    weight = config.lexical_weight if process_group()[0] == 0 else 0.0
    fit = background.submit(fit_lexical_half, rows, weight, config.input_recipe().mask)
    if not torch.cuda.is_available():
        _wait(fit, clock, "lexical_fit")
    return fit


def _prepared_trainer(
    splits: tuple[pd.DataFrame, pd.DataFrame],
    spec: TrainingSpec,
    checkpoint_dir: Path,
    options: RunOptions,
    clock: PhaseClock,
) -> tuple[Trainer, Path | None]:
    """The Trainer for `spec` on the (train, validation) rows, and the checkpoint to resume from."""
    config, checkpoints = spec.config, options.checkpoints
    source = str(spec.warm_start) if spec.warm_start else resolve_base_model(spec.base_model)
    with clock.phase("load_model"):
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision)
        architecture = model_config(source, spec.revision, config)
        check_token_budget(config.max_length, tokenizer, architecture, source)
        set_seed(config.seed)  # before the model exists: its new classification head is drawn from the seed
        model = AutoModelForSequenceClassification.from_pretrained(
            source, revision=spec.revision, config=architecture, use_safetensors=True
        )
    with clock.phase("restore_checkpoints"):
        resume_from = resumable_checkpoint(
            checkpoints.restore(checkpoint_dir) if checkpoints else None, config
        )
    with clock.phase("tokenize"):
        model_key = (source, spec.revision)
        train, validation = tokenized_splits(
            splits, tokenizer, config.input_recipe(), options.tokenized_cache, model_key
        )
    trainer = Trainer(
        model=model,
        args=training_arguments(config, checkpoint_dir, resumable=checkpoints is not None),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad per batch, not to max_length
        compute_metrics=compute_accuracy,
        # the clock last: its save time then includes the checkpoints' own work on each save
        callbacks=[
            CheckpointWrittenByEveryProcess(),  # first: the checkpoints' callback keeps complete ones
            *([checkpoints.callback()] if checkpoints else []),
            *options.callbacks,
            clock.callback(),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # progress reaches whoever watches through options.callbacks
    return trainer, resume_from


def _save_trained(
    trainer: Trainer, config: TrainingConfig, output_dir: Path, clock: PhaseClock
) -> tuple[Path, list[int] | None]:
    """Save the averaged weights (or the best epoch's), tokenizer and input recipe to
    ``output_dir/model``; the folder and the steps averaged."""
    model_dir, averaged_epochs = output_dir / "model", config.averaged_epochs()
    with clock.phase("average"):
        averaged = (
            average_last_checkpoints(trainer.model, output_dir / "checkpoints", averaged_epochs)
            if averaged_epochs
            else None
        )
    with clock.phase("save_model"):
        trainer.save_model(str(model_dir))  # the averaged weights, or the best epoch (load_best_model_at_end)
    if trainer.is_world_process_zero():  # under DDP the Trainer saved the model on the first process only
        # The Trainer also pickles its arguments; nothing pickled is published (config goes in metrics.json).
        (model_dir / "training_args.bin").unlink(missing_ok=True)
        config.input_recipe().save(model_dir)  # scoring reads the text the way training did
    return model_dir, averaged


def _calibrate(trainer: Trainer, config: TrainingConfig, clock: PhaseClock) -> float:
    """The transformer's temperature for the blend with the lexical half (1.0 without one)."""
    with clock.phase("calibrate"):
        return calibrated_temperature(trainer, trainer.eval_dataset) if config.lexical_weight else 1.0


def _wait(fit: Future, clock: PhaseClock, phase: str) -> LexicalFit | None:
    """The background fit's result; the time spent waiting for it is `phase`'s."""
    with clock.phase(phase):
        return fit.result()


def _training_record(
    trainer: Trainer,
    spec: TrainingSpec,
    splits: tuple[pd.DataFrame, pd.DataFrame],
    clock: PhaseClock,
    resume_from: Path | None,
    averaged: list[int] | None,
    lexical: dict | None,
) -> dict:
    """What ``training.json`` says about the trained model (`spec` as it trained on this device)."""
    config = spec.config
    return {
        "resumed_from_step": checkpoint_step(resume_from) if resume_from else None,
        "averaged_steps": averaged,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "seed": config.seed,
        "device": describe_device(),
        "train_batch_size": config.per_device_train_batch_size,
        "learning_rate": config.learning_rate,
        "processes": trainer.args.world_size,
        "lexical": lexical,
        "seconds": clock.breakdown(),
        "base_model": spec.base_model,
        "base_model_revision": spec.revision,
        "base_model_commit": getattr(trainer.model.config, "_commit_hash", None),
        "library_versions": library_versions(),
        **({"plan": spec.plan.model_dump()} if spec.plan else {}),
        "train_rows": len(splits[0]),
        "validation_rows": len(splits[1]),
    }
