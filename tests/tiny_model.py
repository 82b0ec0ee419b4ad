"""Tiny random models (a BERT and an MPNet) with real tokenizers: real Trainer code paths, in seconds."""

from pathlib import Path

from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    MPNetConfig,
    MPNetModel,
    MPNetTokenizerFast,
)

from retrainer.core.base_models import resolve_base_model
from retrainer.core.labels import LABELS
from retrainer.settings import PACKAGED_BASE_MODEL

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": len(LABELS),
}
"""The size of both tiny models: real code paths, trained in seconds."""


def save_tiny_bert(target: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer BERT (hidden size 32) and a real tokenizer to `target`."""
    import torch

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(PACKAGED_BASE_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **TINY)
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


MPNET_SPECIALS = ("<s>", "<pad>", "</s>", "[UNK]")
"""MPNet's special tokens, at the ids its tokenizer gives them (`<mask>` is appended last)."""


def save_tiny_mpnet(target: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer MPNet (what the `large` preset trains) to `target`, with an
    MPNet tokenizer: `<s>`/`</s>` around the text, `<pad>` at id 1, relative position buckets, no token
    types (BERT's [CLS]/[SEP] and token types are what code written for BERT assumes). Like
    all-mpnet-base-v2 it has a pooler and no classification head: each run draws its head. Its
    vocabulary is the packaged model's words."""
    import torch

    torch.manual_seed(seed)
    words = Path(resolve_base_model(PACKAGED_BASE_MODEL), "vocab.txt").read_text().split("\n")
    vocab = [*MPNET_SPECIALS, *(word for word in words if word and not word.startswith("[")), "<mask>"]
    tokenizer = MPNetTokenizerFast(
        vocab={word: index for index, word in enumerate(vocab)}, model_max_length=512
    )
    config = MPNetConfig(vocab_size=len(vocab), max_position_embeddings=514, **TINY)
    MPNetModel(config).save_pretrained(target)  # a pooler the classifier never reads, no head
    tokenizer.save_pretrained(target)
    return target
