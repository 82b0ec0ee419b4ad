"""Report: what a retrain run did, as a typed outcome, a markdown report, pictures and a model card."""

from pathlib import Path

import pandas as pd
import yaml
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from retrainer import LABELS
from retrainer.logs import run_logger
from retrainer.settings import hub_id_of
from tasks.common import once_task
from tasks.evaluate import EvalReport
from tasks.registry import PRODUCTION_CHANGES, DecisionRecord
from tasks.validate import REASON_KIND, ValidatedBatch

DECISION_ARTIFACT_KEY = "retrain-decision"
VALIDATION_ARTIFACT_KEY = "validation-report"
VALIDATION_TABLE_KEY = "validation-batches"
EXAMPLES_PER_REASON = 3
CONFUSION_PNG = "confusion_matrix.png"
ACCURACY_PNG = "production_accuracy.png"


class RetrainOutcome(BaseModel):
    """The result of one retrain run (also the flow's return value)."""

    status: str = Field(
        description="promoted | forced | kept | lost-race | smoke-failed | no-new-data | no-data | "
        "validation-failed | failed (the last two: the run ended Failed; reasons say why)"
    )
    run_id: str
    batches_ingested: int = 0
    rows_accepted: int = 0
    rows_merged: int = 0  # same text and label as an earlier ticket: kept out of the curated data
    rows_quarantined: int = 0
    problems: list[str] = Field(default_factory=list)
    dataset_version: str | None = None
    challenger_version: str | None = None
    champion_version: str | None = None
    challenger: EvalReport | None = None
    champion: EvalReport | None = None
    challenger_new_data: EvalReport | None = None
    champion_new_data: EvalReport | None = None
    p_value: float | None = None
    forced_reason: str | None = None
    production_version: str | None = None
    report_uris: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)

    @property
    def challenger_accuracy(self) -> float | None:
        return self.challenger.accuracy if self.challenger else None

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion.accuracy if self.champion else None

    @property
    def eval_examples(self) -> int:
        return self.challenger.examples if self.challenger else 0


def render_outcome_markdown(outcome: RetrainOutcome) -> str:
    """The decision report: data, champion vs challenger, per-class deltas, p-value, reasons."""
    lines = [
        f"# Retrain run `{outcome.run_id}`: **{outcome.status}**",
        "",
        "## Data",
        f"- batches ingested: {outcome.batches_ingested} (rows accepted {outcome.rows_accepted}, "
        f"merged {outcome.rows_merged}, quarantined {outcome.rows_quarantined})",
        f"- dataset version: `{outcome.dataset_version}`; eval tickets: {outcome.eval_examples}",
        f"- production model now: `{outcome.production_version}`",
    ]
    if outcome.challenger:
        lines += ["", *_comparison_table(outcome), "", *_per_class_table(outcome)]
        lines += ["", f"McNemar exact p-value: {_number(outcome.p_value)}"]
    lines += ["", "## Decision", *(f"- {_escape(reason)}" for reason in outcome.reasons)]
    if outcome.report_uris:
        lines += ["", "## Pictures", *(f"- `{uri}`" for uri in outcome.report_uris)]
    if outcome.problems:
        lines += ["", f"## Quarantined ({len(outcome.problems)} problems, first 20)"]
        lines += [f"- `{_code_safe(problem[:200])}`" for problem in outcome.problems[:20]]
    return "\n".join(lines)


def render_model_card(outcome: RetrainOutcome, metadata: dict) -> str:
    """A Hugging Face model card (README.md) with YAML metadata for a published version."""
    header = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": hub_id_of(metadata["base_model"]),
        "tags": ["ticket-classification", "ticket-retrainer"],
        "labels": list(LABELS),
        "model-index": [
            {
                "name": outcome.challenger_version,
                "results": [
                    {
                        "task": {"type": "text-classification"},
                        "dataset": {
                            "name": "curated tickets",
                            "type": "ticket-retrainer",
                            "revision": outcome.dataset_version,
                        },
                        "metrics": [
                            {"type": "accuracy", "value": round(outcome.challenger.accuracy, 6)},
                            {
                                "type": "f1",
                                "name": "macro F1",
                                "value": round(outcome.challenger.macro_f1, 6),
                            },
                        ],
                    }
                ],
            }
        ],
        "ticket_retrainer": {key: metadata[key] for key in _CARD_FIELDS},
    }
    body = [
        f"# Ticket classifier `{outcome.challenger_version}`",
        "",
        f"Fine-tuned from `{metadata['base_model']}` by ticket-retrainer run `{outcome.run_id}` on dataset "
        f"`{outcome.dataset_version}`. Labels: {', '.join(LABELS)}.",
        *_lexical_note(metadata.get("lexical_half")),
        "",
        *_comparison_table(outcome),
        "",
        "## Decision",
        *(f"- {_escape(reason)}" for reason in outcome.reasons),
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n"


def _lexical_note(lexical_half: dict | None) -> list[str]:
    """How the model blends its lexical half, from what training recorded (None: it has none)."""
    if not lexical_half:
        return []
    if "skipped" in lexical_half:
        return ["", f"Published without its lexical half: {_escape(lexical_half['skipped'])}."]
    return [
        "",
        f"Its predictions blend the transformer's probabilities (logits divided by "
        f"{lexical_half.get('transformer_temperature', 1.0):.2f}, the temperature fitted on the validation "
        f"split) with {lexical_half['blend_weight']:g} of a TF-IDF + logistic-regression model saved "
        "beside it (`lexical.json`, `lexical.safetensors`), read by `retrainer predict`; a plain "
        "`transformers` pipeline reads the transformer alone.",
    ]


def draw_confusion_matrices(outcome: RetrainOutcome, path: Path) -> Path:
    """Challenger (and champion) confusion matrices side by side, as a PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    panels = [("challenger", outcome.challenger)] + (
        [("champion", outcome.champion)] if outcome.champion else []
    )
    figure = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
    for axes, (name, report) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        axes.imshow(report.confusion_matrix, cmap="Blues")
        darkest = max(max(row) for row in report.confusion_matrix) or 1
        for (row, column), count in _cells(report.confusion_matrix):
            color = "white" if count > darkest / 2 else "black"  # readable on dark and light cells
            axes.text(column, row, str(count), ha="center", va="center", color=color)
        axes.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xlabel="predicted", ylabel="true")
        axes.set_xticklabels(LABELS, rotation=20)
        axes.set_yticklabels(LABELS)
        axes.set_title(f"{name}: accuracy {report.accuracy:.3f}")
    figure.savefig(path, dpi=100)
    return path


def draw_production_accuracy(history: list[DecisionRecord], outcome: RetrainOutcome, path: Path) -> Path:
    """Accuracy of every version that went to production (at its decision), plus this challenger."""
    from matplotlib.figure import Figure

    points = [(r.production_version, r.candidate_accuracy) for r in history if r.action in PRODUCTION_CHANGES]
    figure = Figure(figsize=(7, 3.8), layout="constrained")
    axes = figure.subplots()
    if points:
        axes.plot(
            range(len(points)), [accuracy or 0.0 for _, accuracy in points], marker="o", label="production"
        )
    axes.scatter(
        [len(points)], [outcome.challenger.accuracy], color="tab:orange", zorder=3, label="this challenger"
    )
    axes.set(xticks=range(len(points) + 1), ylabel="accuracy on its run's eval set", ylim=(0, 1.02))
    axes.set_xticklabels([_short(version) for version, _ in points] + ["this run"], rotation=30, ha="right")
    axes.legend(loc="lower right")
    axes.set_title("Production accuracy across versions")
    figure.savefig(path, dpi=100)
    return path


def report_outcome(outcome: RetrainOutcome) -> RetrainOutcome:
    """Log the outcome and attach the decision report to the run as a markdown artifact."""
    run_logger().info("retrain %s: %s", outcome.status, "; ".join(outcome.reasons))
    create_markdown_artifact(
        markdown=render_outcome_markdown(outcome), key=DECISION_ARTIFACT_KEY, description="Retrain decision"
    )
    return outcome


def render_validation_markdown(run_id: str, batches: list[ValidatedBatch]) -> str:
    """The validation report: per-batch counts and verdicts, reason counts, escaped examples.

    *merged* rows repeat the text and label of an earlier ticket: not bad, not curated again (see
    `tasks.validate`); they are quarantined as ``<file>.merged.csv`` for review.
    """
    lines = [
        f"# Validation of run `{run_id}`",
        "",
        "| batch | rows | accepted | merged | quarantined | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for batch in batches:
        verdict = "REJECTED: " + _escape("; ".join(batch.batch_errors)) if batch.rejected_whole else "ok"
        counts = f"{batch.rows} | {len(batch.accepted)} | {len(batch.merged)} | {len(batch.rejected)}"
        lines.append(f"| `{_code_safe(batch.key)}` | {counts} | {verdict} |")
    merged = sum(len(batch.merged) for batch in batches)
    if merged:
        lines += [
            "",
            f"{merged} row(s) merged: the same text and label as an earlier ticket of the batch or of the "
            "curated data, which stands for them (listed with `duplicate_of` in the quarantined "
            "`<file>.merged.csv`).",
        ]
    rejected = [batch.rejected.assign(batch=batch.key) for batch in batches if not batch.rejected.empty]
    if rejected:
        lines += ["", "## Reasons", *_reason_examples(rejected)]
    return "\n".join(lines)


def validation_table(batches: list[ValidatedBatch]) -> list[dict]:
    """One row per batch, for the table artifact."""
    return [
        {
            "batch": batch.key,
            "rows": batch.rows,
            "accepted": len(batch.accepted),
            "merged": len(batch.merged),
            "quarantined": len(batch.rejected),
            "rejected_whole": batch.rejected_whole,
            "reasons": "; ".join(batch.batch_errors),
        }
        for batch in batches
    ]


def report_validation(run_id: str, batches: list[ValidatedBatch]) -> None:
    """Attach the validation report (markdown) and the per-batch table to the run."""
    create_markdown_artifact(
        markdown=render_validation_markdown(run_id, batches),
        key=VALIDATION_ARTIFACT_KEY,
        description="Validation",
    )
    create_table_artifact(table=validation_table(batches), key=VALIDATION_TABLE_KEY, description="Batches")


def _reason_examples(rejected: list[pd.DataFrame]) -> list[str]:
    """Rows grouped by the kind of their reason (the reason without the offending values, which
    validation keeps apart: cutting values out of a message would leave fragments of them behind)."""
    rows = pd.concat(rejected, ignore_index=True)
    rows["kind"] = rows[REASON_KIND].astype(str).str.slice(0, 120)
    if "text" not in rows.columns:
        rows["text"] = None
    lines = []
    for kind, group in rows.groupby("kind", sort=False):
        lines.append(f"- **{len(group)}** × {_escape(kind)}")
        for batch, row, text in group.head(EXAMPLES_PER_REASON)[["batch", "source_row", "text"]].itertuples(
            index=False
        ):
            lines.append(f"  - `{_code_safe(str(batch))}` row {row}: {_preview_text(text)}")
    return lines


def _preview_text(value) -> str:
    """A short, inert preview of ticket text for a report: an inline-code span, or ``(no text)``."""
    if not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value):
        return "(no text)"  # no text column, an unparseable line, a null: not the string "nan"
    text = value if isinstance(value, str) else repr(value)
    text = "".join(char if char.isprintable() else " " for char in text)
    if not text.strip():
        return "(blank)"  # an empty code span would show its backticks
    return f"`{_code_safe(text[:100] + ('…' if len(text) > 100 else ''))}`"


_CARD_FIELDS = (
    "version",
    "dataset_version",
    "base_model",
    "base_model_revision",
    "training",
    "gate",
    "lineage",
    "code_version",
    "library_versions",
    "decision",
)


def _comparison_table(outcome: RetrainOutcome) -> list[str]:
    rows = [
        "| model | version | accuracy | macro F1 | accuracy (new data) |",
        "|---|---|---|---|---|",
        _model_row("challenger", outcome.challenger_version, outcome.challenger, outcome.challenger_new_data),
    ]
    if outcome.champion:
        rows.append(
            _model_row("champion", outcome.champion_version, outcome.champion, outcome.champion_new_data)
        )
    return rows


def _model_row(name: str, version: str | None, report: EvalReport, new_data: EvalReport | None) -> str:
    fresh = f"{new_data.accuracy:.4f} on {new_data.examples}" if new_data else "-"
    return f"| {name} | `{version}` | {report.accuracy:.4f} | {report.macro_f1:.4f} | {fresh} |"


def _per_class_table(outcome: RetrainOutcome) -> list[str]:
    rows = ["| class | support | precision | recall | recall delta |", "|---|---|---|---|---|"]
    for label in LABELS:
        challenger, champion = outcome.challenger, outcome.champion
        delta = f"{challenger.recall[label] - champion.recall[label]:+.4f}" if champion else "-"
        rows.append(
            f"| {label} | {challenger.support[label]} | {challenger.precision[label]:.4f} | "
            f"{challenger.recall[label]:.4f} | {delta} |"
        )
    return rows


def _cells(matrix: list[list[int]]):
    return (
        ((row, column), count) for row, counts in enumerate(matrix) for column, count in enumerate(counts)
    )


def _short(version: str | None) -> str:
    return (version or "?")[2:17]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _escape(text: str) -> str:
    """Markdown-inert text: no tags, links or emphasis from data-derived strings."""
    return "".join(f"\\{char}" if char in "\\`*_[]<>|#" else char for char in text)


def _code_safe(text: str) -> str:
    """Keep a value inside its inline-code span (no backticks, no line breaks, no table pipes)."""
    return text.replace("`", "'").replace("\n", " ").replace("\r", " ").replace("|", "\\|")


report_outcome_task = once_task(report_outcome, "report-outcome")
report_validation_task = once_task(report_validation, "report-validation")
