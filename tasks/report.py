"""Report: publish a run's decision and its validation as Prefect artifacts (the content is rendered by
`retrainer.report`)."""

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from retrainer.core.validation import ValidatedBatch
from retrainer.records import RunRecord
from retrainer.report.markdown import render_run_markdown, render_validation_markdown, validation_table
from tasks.common import once_task, run_logger

DECISION_ARTIFACT_KEY = "retrain-decision"
VALIDATION_ARTIFACT_KEY = "validation-report"
VALIDATION_TABLE_KEY = "validation-batches"


def report_run(record: RunRecord) -> RunRecord:
    """Log the run's decision and attach its report to the run as a markdown artifact."""
    run_logger().info("retrain %s: %s", record.status, "; ".join(record.reasons))
    create_markdown_artifact(
        markdown=render_run_markdown(record), key=DECISION_ARTIFACT_KEY, description="Retrain decision"
    )
    return record


def report_validation(run_id: str, batches: list[ValidatedBatch], text_previews: bool = False) -> None:
    """Attach the validation report (markdown) and the per-batch table to the run: batches, rows, reason
    kinds and counts, with masked previews of rejected rows' text only if `text_previews`."""
    create_markdown_artifact(
        markdown=render_validation_markdown(run_id, batches, text_previews),
        key=VALIDATION_ARTIFACT_KEY,
        description="Validation",
    )
    create_table_artifact(table=validation_table(batches), key=VALIDATION_TABLE_KEY, description="Batches")


report_run_task = once_task(report_run, "report-outcome")
report_validation_task = once_task(report_validation, "report-validation")
