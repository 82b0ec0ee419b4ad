"""Fine-tune inside Prefect: the Trainer's progress in the run log and a progress artifact, the ML core's
warnings in the run log, and the challenger's upload to the run scratch.

The training itself is `retrainer.core.training` (no Prefect, no S3): each epoch evaluated on the
validation split, the mean of the last epochs published with the lexical half beside it.
"""

import functools
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from transformers import TrainerCallback

from retrainer.core.training import TRAINING_RECORD, RunOptions, fine_tune
from retrainer.core.training_plan import TrainingPlan
from retrainer.logs import run_logger
from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore
from tasks.common import core_logs_in_run_log, once_task, read_task


class RunLogCallback(TrainerCallback):
    """Sends the Trainer's log lines (loss, eval accuracy, epoch) to the Prefect run logs, and its
    progress to a Prefect progress artifact (inside a run)."""

    def __init__(self) -> None:
        self._artifact_id = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and _in_prefect_run():
            self._artifact_id = create_progress_artifact(progress=0.0, description="Fine-tuning progress (%)")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            summary = ", ".join(f"{name}={_round(value)}" for name, value in logs.items())
            run_logger().info("step %d/%d: %s", state.global_step, state.max_steps, summary)

    def on_step_end(self, args, state, control, **kwargs):
        every = max(1, state.max_steps // 20)  # about 20 updates per run, not one per step
        if self._artifact_id and (state.global_step % every == 0 or state.global_step == state.max_steps):
            update_progress_artifact(self._artifact_id, progress=100.0 * state.global_step / state.max_steps)


def _in_prefect_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _round(value):
    return f"{value:.4g}" if isinstance(value, float) else value


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
    settings: RetrainerSettings, tickets: int, epochs: float
) -> str | None:
    """Warn in the run log, with the expected time, when a base model meant for a GPU (the `large`
    preset's) is about to train without CUDA; the warning, or None."""
    model = settings.gpu_base_model()
    if model is None or torch.cuda.is_available():
        return None
    message = model.cpu_training_warning(settings.base_model, tickets, epochs)
    run_logger().warning(message)
    return message


def record_plan(model_dir: Path, plan: TrainingPlan, train_rows: pd.DataFrame, validation_rows: pd.DataFrame):
    """Add the training plan and the rows trained and validated on to the model's ``training.json``."""
    path = model_dir / TRAINING_RECORD
    record = json.loads(path.read_text())
    record.update(plan=plan.model_dump(), train_rows=len(train_rows), validation_rows=len(validation_rows))
    path.write_text(json.dumps(record, indent=2))


def upload_challenger(store: ObjectStore, model_dir: Path, prefix: str) -> list[str]:
    """Upload a trained model to a run's scratch prefix (not the registry: the gate has not spoken)."""
    return store.upload_dir(model_dir, prefix, immutable=False)


# Training is not I/O: a retry would only repeat a deterministic failure.
fine_tune_task = once_task(fine_tune_in_run, "fine-tune")
# A retried upload rewrites the same scratch keys with the same bytes: idempotent.
upload_challenger_task = read_task(upload_challenger, "upload-challenger")
