"""Report: what a retrain run did, as a typed outcome and a Prefect markdown artifact."""

from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from retrainer.logs import run_logger
from tasks.common import once_task

DECISION_ARTIFACT_KEY = "retrain-decision"


class RetrainOutcome(BaseModel):
    """The result of one retrain run (also the flow's return value)."""

    status: str = Field(description="promoted | kept | lost-race | no-new-data | no-data")
    run_id: str
    batches_ingested: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    problems: list[str] = Field(default_factory=list)
    dataset_version: str | None = None
    challenger_version: str | None = None
    challenger_accuracy: float | None = None
    champion_version: str | None = None
    champion_accuracy: float | None = None
    eval_examples: int = 0
    production_version: str | None = None
    reasons: list[str] = Field(default_factory=list)


def render_outcome_markdown(outcome: RetrainOutcome) -> str:
    """The decision report as markdown (ticket text never appears in it)."""
    lines = [
        f"# Retrain run: **{outcome.status}**",
        "",
        f"- batches ingested: {outcome.batches_ingested} "
        f"(rows accepted {outcome.rows_accepted}, quarantined {outcome.rows_quarantined})",
        f"- dataset version: `{outcome.dataset_version}`",
        f"- production model now: `{outcome.production_version}`",
        "",
    ]
    if outcome.challenger_accuracy is not None:
        lines += [
            f"| model | version | accuracy on {outcome.eval_examples} eval tickets |",
            "|---|---|---|",
            f"| challenger | `{outcome.challenger_version}` | {outcome.challenger_accuracy:.4f} |",
            f"| champion | `{outcome.champion_version}` | {_format_accuracy(outcome.champion_accuracy)} |",
            "",
        ]
    lines += ["## Reasons", *(f"- {reason}" for reason in outcome.reasons)]
    if outcome.problems:
        lines += ["", f"## Quarantined ({len(outcome.problems)} problems, first 20)"]
        lines += [f"- `{_code_safe(problem[:200])}`" for problem in outcome.problems[:20]]
    return "\n".join(lines)


def report_outcome(outcome: RetrainOutcome) -> RetrainOutcome:
    """Log the outcome and attach it to the run as a markdown artifact."""
    run_logger().info("retrain %s: %s", outcome.status, "; ".join(outcome.reasons))
    create_markdown_artifact(
        markdown=render_outcome_markdown(outcome), key=DECISION_ARTIFACT_KEY, description="Retrain decision"
    )
    return outcome


def _code_safe(text: str) -> str:
    """Keep a value inside its inline-code span (no backticks, no line breaks)."""
    return text.replace("`", "'").replace("\n", " ")


def _format_accuracy(value: float | None) -> str:
    return "none yet" if value is None else f"{value:.4f}"


report_outcome_task = once_task(report_outcome, "report-outcome")
