"""The fine-tune step inside Prefect, in this process: the Trainer's progress in the run log and a
progress artifact (`tasks.training_progress.RunLogCallback`), the ML core's warnings in the run log, and
the challenger's upload to the run scratch.

Where "train" lives: the fine-tune flow (flows/fine_tune.py) reads the rows by reference and calls this
step, or tasks/train_ddp.py on several processes; both run `retrainer.core.training.fine_tune` (no
Prefect, no S3), which trains as the run's `TrainingRecipe` (`retrainer.core.training_plan`) says.
"""

import functools
from dataclasses import replace
from pathlib import Path

import torch

from retrainer.core.training import RunOptions, fine_tune
from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore
from tasks.common import core_logs_in_run_log, once_task, read_task, run_logger
from tasks.training_progress import RunLogCallback


@functools.wraps(fine_tune, assigned=())  # its signature: Prefect binds the task's parameters by it
def fine_tune_in_run(*args, options: RunOptions | None = None, **kwargs) -> Path:
    """`fine_tune` (the same arguments) as the fine-tune task runs it: the Trainer's log lines and
    progress reach the run (`RunLogCallback`, before the caller's callbacks), and so do the warnings
    the core logs."""
    options = options or RunOptions()
    callbacks = (RunLogCallback(), *options.callbacks)
    with core_logs_in_run_log():
        return fine_tune(*args, options=replace(options, callbacks=callbacks), **kwargs)


def warn_when_a_gpu_model_trains_on_cpu(
    settings: RetrainerSettings, tickets: int, epochs: float, base_model: str | None = None
) -> str | None:
    """Warn in the run log, with the expected time, when a base model meant for a GPU (the `large`
    preset's, or `base_model`, default the configured one) is about to train without CUDA; the warning,
    or None."""
    base_model = base_model or settings.base_model
    model = settings.gpu_base_model(base_model)
    if model is None or torch.cuda.is_available():
        return None
    message = model.cpu_training_warning(base_model, tickets, epochs)
    run_logger().warning(message)
    return message


def upload_challenger(store: ObjectStore, model_dir: Path, prefix: str) -> list[str]:
    """Upload a trained model to a run's scratch prefix (not the registry: the gate has not spoken)."""
    return store.upload_dir(model_dir, prefix, immutable=False)


# Training is not I/O: a retry would only repeat a deterministic failure.
fine_tune_task = once_task(fine_tune_in_run, "fine-tune")
# A retried upload rewrites the same scratch keys with the same bytes: idempotent.
upload_challenger_task = read_task(upload_challenger, "upload-challenger")
