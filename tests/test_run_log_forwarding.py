"""What the ML core logs reaches the Prefect run log while a task runs it, read back from a real API.

The core logs to the standard `logging` (`retrainer.core.*`) and knows nothing of Prefect;
`tasks.common.core_logs_in_run_log` hands its records to the run logger for the duration of a task.
"""

import logging
import re
import uuid
from pathlib import Path

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from app.samples import generate_tickets
from retrainer.core.training import TrainingSpec
from retrainer.settings import TrainingConfig
from tasks.common import core_logs_in_run_log
from tasks.train import fine_tune_task

CORE_LOGGER = logging.getLogger("retrainer.core.training")


@task
def _log_from_the_core() -> None:
    with core_logs_in_run_log():
        CORE_LOGGER.info("core info %d", 1)
        CORE_LOGGER.warning("core warning at 100%")  # a % in a message is not formatted again
    CORE_LOGGER.warning("core warning after the block")


@flow
def _core_logs_flow() -> None:
    _log_from_the_core()


@flow
def _fine_tune_flow(base_model: str, output_dir: str) -> str:
    tickets = generate_tickets(90, seed=1)
    rows = tickets[tickets["label"] != "general_inquiry"]  # the lexical half needs every label: a warning
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, lexical_weight=0.6)
    spec = TrainingSpec(base_model, "main", config)
    return str(fine_tune_task(rows.iloc[10:], rows.iloc[:10], spec, Path(output_dir)))


def _run_logs(flow_run_id: uuid.UUID) -> list:
    """The flow run's log records in the API (after the queued ones were sent)."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def test_what_the_core_logs_during_a_task_reaches_the_run_log_and_only_then(prefect_api):
    state = _core_logs_flow(return_state=True)

    logs = {log.message: log for log in _run_logs(state.state_details.flow_run_id)}
    assert logs["core info 1"].level == logging.INFO and logs["core info 1"].task_run_id is not None
    assert logs["core warning at 100%"].level == logging.WARNING
    assert "core warning after the block" not in logs
    core = logging.getLogger("retrainer.core")
    assert (core.handlers, core.propagate, core.level) == ([], True, logging.NOTSET)  # as it was


def test_the_fine_tune_task_reports_its_steps_progress_and_the_cores_warnings_to_the_run(
    prefect_api, tiny_model_dir, tmp_path
):
    state = _fine_tune_flow(str(tiny_model_dir), str(tmp_path), return_state=True)

    flow_run_id = state.state_details.flow_run_id
    messages = [log.message for log in _run_logs(flow_run_id)]
    assert "published without its lexical half: no training texts labelled general_inquiry" in messages
    assert any(re.match(r"step (\d+)/\1: .*eval_accuracy=", message) for message in messages)  # the last
    with get_client(sync_client=True) as client:
        [progress] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    assert float(progress.data) == 100.0
