"""Predictions a published model has already made, so that a night scores it only on what is new to it.

A published version never changes (its weights, its input recipe and its lexical half are fixed at
publish), so its probabilities for a ticket are a function of the ticket's text alone: they are kept by
the SHA-256 of the text, with the ticket id (to erase them with the ticket) and never the text. A ticket
sent again with other text has another digest and is scored again.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retrainer.core.labels import LABELS
from retrainer.core.scoring import predict_probabilities

PROBABILITY_COLUMNS = tuple(f"p_{label}" for label in LABELS)
COLUMNS = ("ticket_id", "text_sha256", *PROBABILITY_COLUMNS)
"""A stored part's columns: no text."""


def text_digest(text: str) -> bytes:
    """The key of a text's predictions: the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass
class KnownPredictions:
    """One model version's class probabilities (label order) by text digest."""

    rows: dict[bytes, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_frames(cls, frames: list[pd.DataFrame]) -> "KnownPredictions":
        """From stored parts (`COLUMNS`), later parts winning."""
        known = cls()
        for frame in frames:
            probabilities = frame[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float32)
            known.rows.update(zip(frame["text_sha256"], probabilities, strict=True))
        return known

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Predicted:
    """Probabilities for every text asked about, and which of them were computed now (not known)."""

    probabilities: torch.Tensor  # (texts, labels)
    digests: list[bytes]
    scored: list[int]  # indices of the texts scored by the model in this call

    @property
    def label_ids(self) -> list[int]:
        """The most probable label id per text."""
        return self.probabilities.argmax(dim=-1).tolist()

    def new_part(self, ticket_ids: list[str]) -> pd.DataFrame:
        """The rows computed now, as a part to store (`COLUMNS`)."""
        scored = self.probabilities[self.scored].numpy()
        frame = pd.DataFrame(
            {
                "ticket_id": [ticket_ids[index] for index in self.scored],
                "text_sha256": [self.digests[index] for index in self.scored],
            }
        )
        for column, values in zip(PROBABILITY_COLUMNS, scored.T, strict=True):
            frame[column] = values.astype(np.float32)
        return frame


def predict_reusing(model_dir: Path, texts: list[str], max_length: int, known: KnownPredictions) -> Predicted:
    """The probabilities of `texts` by the model in `model_dir`, scoring only the texts whose digest
    `known` does not hold (each distinct text once)."""
    digests = [text_digest(text) for text in texts]
    first_unknown: dict[bytes, int] = {}
    for index, digest in enumerate(digests):
        if digest not in known.rows:
            first_unknown.setdefault(digest, index)
    missing = list(first_unknown.items())
    probabilities = torch.empty((len(texts), len(LABELS)))
    computed: dict[bytes, torch.Tensor] = {}
    if missing:
        fresh = predict_probabilities(model_dir, [texts[index] for _, index in missing], max_length)
        computed = {digest: row for (digest, _), row in zip(missing, fresh, strict=True)}
    for index, digest in enumerate(digests):
        row = computed.get(digest)
        probabilities[index] = row if row is not None else torch.tensor(known.rows[digest])
    return Predicted(probabilities, digests, scored=sorted(index for _, index in missing))
