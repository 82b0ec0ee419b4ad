"""The Trainer's progress in the Prefect run: its log lines in the run log and a progress artifact, from
the in-process fine-tune step (`tasks.train`) and from each DDP training process (`tasks.train_ddp`).

A module of its own because it imports transformers: `tasks.common`, which every task imports, does not.
"""

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from transformers import TrainerCallback

from tasks.common import run_logger


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
