"""A tiny random BERT with the packaged model's tokenizer: real Trainer code paths, in seconds."""

from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from retrainer.core.labels import LABELS
from retrainer.core.training import resolve_base_model
from retrainer.settings import PACKAGED_BASE_MODEL


def save_tiny_bert(target: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer BERT (hidden size 32) and a real tokenizer to `target`."""
    import torch

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(PACKAGED_BASE_MODEL))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(LABELS),
    )
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
