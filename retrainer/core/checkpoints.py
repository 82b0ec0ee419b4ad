"""The Trainer's checkpoints on this machine: where they outlive it (`Checkpoints`, which
tasks/checkpoints.py keeps in S3), which one a run resumes from, every process's part of one written
before it is kept (DDP), and the mean weights of the last epochs' checkpoints that a run publishes."""

import json
import logging
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from retrainer.core.trainer_arguments import process_group
from retrainer.core.weights import mean_weights
from retrainer.settings import TrainingConfig

logger = logging.getLogger(__name__)


class Checkpoints(Protocol):
    """Where a run's checkpoints outlive the machine, so that a killed run resumes (tasks/checkpoints.py
    keeps them in S3)."""

    def restore(self, local_dir: Path) -> Path | None:
        """Bring the saved checkpoints into `local_dir`; the latest one's folder, or None."""

    def callback(self) -> TrainerCallback:
        """A Trainer callback that keeps every checkpoint as soon as the Trainer has saved it."""


def checkpoint_step(name: str | Path) -> int:
    """The training step a Trainer checkpoint folder (``checkpoint-<step>``) was saved at."""
    return int(Path(name).name.split("-")[1])


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


class CheckpointWrittenByEveryProcess(TrainerCallback):
    """Under DDP every process writes its own part of each checkpoint (its RNG state, which a resumed
    run reads back on that process) while the first writes the rest: all of them wait here until the
    checkpoint is complete, before the callbacks after this one (the checkpoints' upload) see it."""

    def on_save(self, args, state, control, **kwargs):
        if process_group()[1] > 1:
            torch.distributed.barrier()
