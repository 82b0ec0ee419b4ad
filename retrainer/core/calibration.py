"""Temperature scaling (Guo et al., 2017): one number that makes a classifier's probabilities honest.

Why: fine-tuned for 8 epochs, the transformer is far more confident than it is right (mean top
probability 0.95 at ~0.80 accuracy on GitHub issues), so in a blend with the lexical half its
probabilities drown the other's. Dividing its logits by a temperature fitted on held-out tickets
(the validation split, which it never trained on) fixes the confidence without changing a single
prediction of the transformer alone.
"""

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the types only: calibrating a probability needs neither
    from datasets import Dataset
    from transformers import Trainer

MIN_TEMPERATURE = 0.5
MAX_TEMPERATURE = 10.0
MIN_CALIBRATION_ROWS = 30
"""Fewer held-out tickets than this fit a temperature on noise: the logits are kept as they are."""
_SEARCH_STEPS = 60  # golden-section steps: the bracket shrinks to 0.618**60 of its width


def fit_temperature(logits: torch.Tensor, label_ids: list[int]) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the negative
    log-likelihood of `label_ids` under ``softmax(logits / temperature)``; 1.0 (no change) for
    fewer than MIN_CALIBRATION_ROWS rows.

    The likelihood is convex in the inverse temperature, so a golden-section search finds its
    minimum (deterministically, no optimiser state or learning rate to tune).
    """
    if len(label_ids) < MIN_CALIBRATION_ROWS:
        return 1.0
    logits = logits.double()
    targets = torch.tensor(label_ids)

    def loss(inverse: float) -> float:
        return torch.nn.functional.cross_entropy(logits * inverse, targets).item()

    low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(_SEARCH_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if loss(left) <= loss(right):
            high = right
        else:
            low = left
    return 1 / ((low + high) / 2)


def soften(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` from ``softmax(logits)`` (log-probabilities differ from the
    logits by a constant per row, which softmax ignores)."""
    if temperature == 1.0:
        return probabilities
    return (probabilities.log() / temperature).softmax(dim=-1)


def calibrated_temperature(trainer: "Trainer", validation_dataset: "Dataset") -> float:
    """The temperature that makes the trained model's probabilities on the validation split (never
    trained on) most likely (`fit_temperature`; 1.0 when the split is too small to tell)."""
    scored = trainer.predict(validation_dataset)
    return fit_temperature(torch.from_numpy(scored.predictions).float(), scored.label_ids.tolist())
