"""Temperature scaling: the fitted temperature undoes over-confidence and never changes a prediction."""

import pytest
import torch

from retrainer.core.calibration import (
    MAX_TEMPERATURE,
    MIN_CALIBRATION_ROWS,
    MIN_TEMPERATURE,
    fit_temperature,
    soften,
)


def _labels_drawn_from(logits: torch.Tensor, seed: int = 0) -> list[int]:
    """Labels that follow softmax(logits): a perfectly calibrated model's view of the world."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1).tolist()


def _nll(logits: torch.Tensor, labels: list[int], temperature: float) -> float:
    return torch.nn.functional.cross_entropy(logits.double() / temperature, torch.tensor(labels)).item()


@pytest.mark.parametrize("overconfidence", [0.7, 2.5, 4.0])
def test_the_fitted_temperature_undoes_a_known_overconfidence(overconfidence):
    honest = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1)) * 2
    labels = _labels_drawn_from(honest)

    temperature = fit_temperature(honest * overconfidence, labels)

    assert temperature == pytest.approx(overconfidence, rel=0.1)


def test_the_fitted_temperature_is_the_likelihood_optimum():
    logits = torch.randn(500, 3, generator=torch.Generator().manual_seed(2)) * 6
    labels = _labels_drawn_from(logits / 2.2, seed=3)

    temperature = fit_temperature(logits, labels)

    best = _nll(logits, labels, temperature)
    for other in (1.0, temperature * 0.98, temperature * 1.02, MIN_TEMPERATURE, MAX_TEMPERATURE):
        assert best <= _nll(logits, labels, other) + 1e-12


def test_the_temperature_stays_within_its_bounds():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]).repeat(20, 1)
    always_right = [0, 1, 2] * 20
    always_wrong = [1, 2, 0] * 20

    assert fit_temperature(logits, always_right) == pytest.approx(MIN_TEMPERATURE, rel=1e-6)
    assert fit_temperature(logits, always_wrong) == pytest.approx(MAX_TEMPERATURE, rel=1e-6)


def test_too_few_rows_keep_the_logits_as_they_are():
    logits = torch.randn(MIN_CALIBRATION_ROWS - 1, 3) * 10
    labels = [0] * (MIN_CALIBRATION_ROWS - 1)

    assert fit_temperature(logits, labels) == 1.0


def test_softening_probabilities_equals_dividing_the_logits_and_keeps_every_prediction():
    logits = torch.randn(200, 3, generator=torch.Generator().manual_seed(4)) * 8
    logits[0] = torch.tensor([250.0, 0.0, -250.0])  # probabilities that underflow to exactly 0

    softened = soften(logits.softmax(-1), 2.3)

    assert torch.allclose(softened, (logits / 2.3).softmax(-1), atol=1e-6)
    assert torch.equal(softened.argmax(-1), logits.argmax(-1))
    assert torch.isfinite(softened).all()
    assert torch.allclose(softened.sum(-1), torch.ones(200))
    assert softened.max(-1).values.mean() < logits.softmax(-1).max(-1).values.mean()


def test_temperature_one_returns_the_probabilities_untouched():
    probabilities = torch.randn(10, 3).softmax(-1)

    assert soften(probabilities, 1.0) is probabilities
