"""The model card (a Hugging Face README.md with YAML metadata) published with each model version."""

import yaml

from retrainer.core.labels import LABELS
from retrainer.core.masking import MASK_KINDS
from retrainer.provenance import code_version, library_versions
from retrainer.records import RunRecord
from retrainer.report.markdown import comparison_table, escape
from retrainer.settings import RetrainerSettings, hub_id_of


def render_model_card(record: RunRecord, metadata: dict) -> str:
    """A Hugging Face model card (README.md) with YAML metadata for a published version."""
    header = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": hub_id_of(metadata["base_model"]),
        "tags": ["ticket-classification", "ticket-retrainer"],
        "labels": list(LABELS),
        "model-index": [
            {
                "name": record.challenger_version,
                "results": [
                    {
                        "task": {"type": "text-classification"},
                        "dataset": {
                            "name": "curated tickets",
                            "type": "ticket-retrainer",
                            "revision": record.dataset_version,
                        },
                        "metrics": [
                            {"type": "accuracy", "value": round(record.challenger.accuracy, 6)},
                            {
                                "type": "f1",
                                "name": "macro F1",
                                "value": round(record.challenger.macro_f1, 6),
                            },
                        ],
                    }
                ],
            }
        ],
        "ticket_retrainer": {key: metadata[key] for key in _CARD_FIELDS},
    }
    body = [
        f"# Ticket classifier `{record.challenger_version}`",
        "",
        f"Fine-tuned from `{metadata['base_model']}` (revision `{metadata['base_model_revision']}`) by "
        f"ticket-retrainer run `{record.run_id}` on dataset `{record.dataset_version}`. Labels: "
        f"{', '.join(LABELS)}.",
        *lexical_note(metadata.get("lexical_half")),
        *masking_note(metadata["training"]),
        "",
        *comparison_table(record),
        "",
        "## Decision",
        *(f"- {escape(reason)}" for reason in record.reasons),
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n"


def lexical_note(lexical_half: dict | None) -> list[str]:
    """How the model blends its lexical half, from what training recorded (None: it has none)."""
    if not lexical_half:
        return []
    if "skipped" in lexical_half:
        return ["", f"Published without its lexical half: {escape(lexical_half['skipped'])}."]
    return [
        "",
        f"Its predictions blend the transformer's probabilities (logits divided by "
        f"{lexical_half.get('transformer_temperature', 1.0):.2f}, the temperature fitted on the validation "
        f"split) with {lexical_half['blend_weight']:g} of a TF-IDF + logistic-regression model saved "
        "beside it (`lexical.json`, `lexical.safetensors`), read by `retrainer predict`; a plain "
        "`transformers` pipeline reads the transformer alone.",
    ]


def masking_note(training: dict) -> list[str]:
    """Which kinds of customer data the model never read (its input recipe masks them)."""
    masked = [kind for kind in MASK_KINDS if training.get(f"mask_{kind}")]
    if not masked:
        return ["", "Its input is not masked: customer data in tickets reached the model as written."]
    placeholders = ", ".join(f"`[{kind}]`" for kind in masked)
    return [
        "",
        f"Customer data is masked before the model reads a ticket, in training and scoring: {placeholders}. "
        "No ticket text is stored with the model.",
    ]


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


def published_metadata(
    record: RunRecord, settings: RetrainerSettings, lineage: list[dict], lexical_half: dict | None
) -> dict:
    """What is stored beside the weights as ``metrics.json`` (and in the model card): scores, data, recipe,
    and the lexical half as trained (blend weight and temperature, or why it is missing)."""
    return {
        "version": record.challenger_version,
        "accuracy": record.challenger.accuracy,
        "macro_f1": record.challenger.macro_f1,
        "evaluation": record.challenger.model_dump(),
        "new_data_evaluation": record.challenger_new_data.model_dump()
        if record.challenger_new_data
        else None,
        "established_evaluation": record.challenger_established.model_dump()
        if record.challenger_established
        else None,
        "label_check": record.label_check_summary(),
        # eval tickets scored where the model was trained (a gpu pool deployment) and on the cpu worker
        "eval_scored": {"where_trained": record.challenger_reused, "cpu_worker": record.challenger_scored},
        "eval_sampling": record.eval_sampling.model_dump() if record.eval_sampling else None,
        "dataset_version": record.dataset_version,
        "base_model": settings.base_model,
        "base_model_revision": settings.base_model_revision,
        "training": settings.training.model_dump(),
        "training_plan": record.training_plan.model_dump() if record.training_plan else None,
        "incremental": settings.incremental.model_dump(),
        "lexical_half": lexical_half,
        "gate": settings.gate.model_dump(),
        "lineage": lineage,
        "code_version": code_version(),
        "library_versions": library_versions(),
        "decision": record.decision_summary(),
    }
