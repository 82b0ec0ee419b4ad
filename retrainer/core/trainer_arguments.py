"""The Trainer's arguments for a training config on this hardware: the config's fields marked as Trainer
arguments (`TrainingConfig.trainer_arguments`), the epoch rhythm of evaluating and saving, mixed precision
for the device, and what a PyTorch process group (DDP) needs."""

from pathlib import Path

import torch
from transformers import TrainingArguments

from retrainer.core.devices import cpu_supports_bf16
from retrainer.settings import TrainingConfig


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
