"""The markdown reports: a run's decision, and the validation of the batches it ingested.

Reports are Prefect artifacts, readable by everyone with access to the Prefect UI: they carry batch
keys, row numbers, reason kinds and counts, never a ticket's text nor the offending values of a row
(those stay in the quarantine files in S3). Text previews of rejected rows are shown, masked, only when
asked for (`RetrainerSettings.report_text_previews`). Every data-derived string is made inert
(`escape`, `code_safe`): ticket text and file names never turn into links, tags or table cells of their
own.
"""

import pandas as pd

from retrainer.core.evaluation import EvalReport
from retrainer.core.labels import LABELS
from retrainer.core.masking import mask_text
from retrainer.core.validation import REASON_KIND, ValidatedBatch
from retrainer.records import RunRecord

EXAMPLES_PER_REASON = 3
PREVIEW_CHARS = 100


def render_run_markdown(record: RunRecord) -> str:
    """The decision report: data, champion vs challenger, per-class deltas, p-value, reasons."""
    lines = [
        f"# Retrain run `{record.run_id}`: **{record.status}**",
        "",
        "## Data",
        f"- batches ingested: {record.batches_ingested} (rows accepted {record.rows_accepted}, "
        f"merged {record.rows_merged}, quarantined {record.rows_quarantined}"
        + (f"; {record.rows_erased} record(s) of erased tickets withheld)" if record.rows_erased else ")"),
        f"- dataset version: `{record.dataset_version}`; eval tickets: {record.eval_examples}",
        f"- production model now: `{record.production_version}`",
    ]
    sampling = record.eval_sampling
    if sampling and sampling.sampled:
        lines.append(
            f"- eval set bounded: {sampling.scored} of {sampling.eval_tickets} eval tickets scored (all "
            f"{sampling.new} new ones, the others per label: those whose id hashes lowest; "
            f"`gate.max_eval_tickets` {sampling.max_tickets})"
        )
    if record.challenger_reused:
        lines.append(
            f"- challenger scored where it was trained on {record.challenger_reused} eval ticket(s), here "
            f"on {record.challenger_scored}"
        )
    if record.champion_scored is not None:
        lines.append(
            f"- champion `{record.champion_version}` scored on {record.champion_scored} eval ticket(s) "
            f"new to it; its predictions for the other {record.champion_reused} were known from earlier runs"
        )
    if record.challenger:
        lines += ["", *comparison_table(record), "", *_per_class_table(record)]
        lines += ["", f"McNemar exact p-value: {_number(record.p_value)}"]
    if record.label_agreement:
        lines += ["", *label_check_lines(record)]
    lines += ["", "## Decision", *(f"- {escape(reason)}" for reason in record.reasons)]
    if record.report_uris:
        lines += ["", "## Pictures", *(f"- `{uri}`" for uri in record.report_uris)]
    if record.problems:
        lines += ["", f"## Quarantined ({len(record.problems)} problems, first 20)"]
        lines += [f"- `{code_safe(problem[:200])}`" for problem in record.problems[:20]]
    return "\n".join(lines)


def render_validation_markdown(
    run_id: str, batches: list[ValidatedBatch], text_previews: bool = False
) -> str:
    """The validation report: per-batch counts and verdicts, reason counts, and example rows (batch and
    row; with `text_previews`, a masked preview of each example's text too).

    *merged* rows repeat the text and label of an earlier ticket: not bad, not curated again (see
    `retrainer.core.validation`); they are quarantined as ``<file>.merged.csv`` for review.
    """
    lines = [
        f"# Validation of run `{run_id}`",
        "",
        "| batch | rows | accepted | merged | quarantined | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for batch in batches:
        verdict = "REJECTED: " + escape("; ".join(batch.batch_errors)) if batch.rejected_whole else "ok"
        counts = f"{batch.rows} | {len(batch.accepted)} | {len(batch.merged)} | {len(batch.rejected)}"
        lines.append(f"| `{code_safe(batch.key)}` | {counts} | {verdict} |")
    merged = sum(len(batch.merged) for batch in batches)
    if merged:
        lines += [
            "",
            f"{merged} row(s) merged: the same text and label as an earlier ticket of the batch or of the "
            "curated data, which stands for them (listed with `duplicate_of` in the quarantined "
            "`<file>.merged.csv`).",
        ]
    erased = [f"`{code_safe(batch.key)}` {batch.erased}" for batch in batches if batch.erased]
    if erased:
        lines += [
            "",
            f"Records of tickets erased on request, withheld (neither curated nor quarantined): "
            f"{', '.join(erased)}.",
        ]
    rejected = [batch.rejected.assign(batch=batch.key) for batch in batches if not batch.rejected.empty]
    if rejected:
        lines += ["", "## Reasons", *_reason_examples(rejected, text_previews)]
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
            "erased": batch.erased,
            "rejected_whole": batch.rejected_whole,
            "reasons": "; ".join(batch.batch_errors),
        }
        for batch in batches
    ]


def _reason_examples(rejected: list[pd.DataFrame], text_previews: bool) -> list[str]:
    """Rows grouped by the kind of their reason (the reason without the offending values, which
    validation keeps apart: cutting values out of a message would leave fragments of them behind);
    a few examples of each by batch and row, with a masked preview of their text if `text_previews`."""
    rows = pd.concat(rejected, ignore_index=True)
    rows["kind"] = rows[REASON_KIND].astype(str).str.slice(0, 120)
    if "text" not in rows.columns:
        rows["text"] = None
    lines = []
    for kind, group in rows.groupby("kind", sort=False):
        lines.append(f"- **{len(group)}** × {escape(kind)}")
        for batch, row, text in group.head(EXAMPLES_PER_REASON)[["batch", "source_row", "text"]].itertuples(
            index=False
        ):
            example = f"  - `{code_safe(str(batch))}` row {row}"
            lines.append(f"{example}: {_preview_text(text)}" if text_previews else example)
    return lines


def _preview_text(value) -> str:
    """A short, inert, masked preview of ticket text for a report: an inline-code span, or ``(no text)``.

    Masked before it is cut, so a cut never leaves part of an address or number unmasked."""
    if not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value):
        return "(no text)"  # no text column, an unparseable line, a null: not the string "nan"
    text = mask_text(value if isinstance(value, str) else repr(value))
    text = "".join(char if char.isprintable() else " " for char in text)
    if not text.strip():
        return "(blank)"  # an empty code span would show its backticks
    cut = text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else "")
    return f"`{code_safe(cut)}`"


def comparison_table(record: RunRecord) -> list[str]:
    rows = [
        "| model | version | accuracy | macro F1 | accuracy (new data) |",
        "|---|---|---|---|---|",
        _model_row("challenger", record.challenger_version, record.challenger, record.challenger_new_data),
    ]
    if record.champion:
        rows.append(
            _model_row("champion", record.champion_version, record.champion, record.champion_new_data)
        )
    return rows


def _model_row(name: str, version: str | None, report: EvalReport, new_data: EvalReport | None) -> str:
    fresh = f"{new_data.accuracy:.4f} on {new_data.examples}" if new_data else "-"
    return f"| {name} | `{version}` | {report.accuracy:.4f} | {report.macro_f1:.4f} | {fresh} |"


def _per_class_table(record: RunRecord) -> list[str]:
    rows = ["| class | support | precision | recall | recall delta |", "|---|---|---|---|---|"]
    for label in LABELS:
        challenger, champion = record.challenger, record.champion
        delta = f"{challenger.recall[label] - champion.recall[label]:+.4f}" if champion else "-"
        rows.append(
            f"| {label} | {challenger.support[label]} | {challenger.precision[label]:.4f} | "
            f"{challenger.recall[label]:.4f} | {delta} |"
        )
    return rows


REPORTED_BATCHES = 10


def label_check_lines(record: RunRecord) -> list[str]:
    """The label check: the champion's agreement with the labels new to it against the established ones,
    both models on the established eval tickets, and the new batches, lowest agreement first."""
    agreement, summary = record.label_agreement, record.label_check_summary()
    lines = [
        "## Label check",
        f"- champion agrees with {_share(agreement.new_agreement)} of {agreement.new_tickets} ticket(s) new "
        f"to it, {_share(agreement.established_agreement)} of {agreement.established_tickets} established "
        f"eval ticket(s) ({agreement.extra_predictions} new ticket(s) outside the eval split scored in "
        f"{agreement.extra_seconds:.1f} s)",
        f"- accuracy on the established eval tickets: challenger "
        f"{_share(summary['challenger_established_accuracy'])}, champion "
        f"{_share(summary['champion_established_accuracy'])}",
    ]
    if record.suspect_batches:
        lines.append(
            f"- **SUSPECT batches**: {', '.join(f'`{code_safe(key)}`' for key in record.suspect_batches)}"
        )
    lines += ["", "| new batch | tickets | champion agrees |", "|---|---|---|"]
    for key, batch in agreement.lowest_batches(REPORTED_BATCHES):
        lines.append(f"| `{code_safe(key)}` | {batch.tickets} | {batch.agreement:.1%} |")
    return lines


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def escape(text: str) -> str:
    """Markdown-inert text: no tags, links or emphasis from data-derived strings."""
    return "".join(f"\\{char}" if char in "\\`*_[]<>|#" else char for char in text)


def code_safe(text: str) -> str:
    """Keep a value inside its inline-code span (no backticks, no line breaks, no table pipes)."""
    return text.replace("`", "'").replace("\n", " ").replace("\r", " ").replace("|", "\\|")
