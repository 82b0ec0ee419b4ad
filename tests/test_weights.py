"""Weight averaging (retrainer.core.weights): the mean the product publishes, computed one state at a time."""

import gc
import weakref

import pytest
import torch

from retrainer.core.weights import mean_weights


def _state(value: float) -> dict[str, torch.Tensor]:
    return {
        "encoder.weight": torch.full((4, 3), value),
        "encoder.half": torch.full((2,), value, dtype=torch.bfloat16),
        "position_ids": torch.arange(5) + int(value),
    }


def test_floating_tensors_are_averaged_in_their_own_dtype_and_integer_buffers_come_from_the_last():
    averaged = mean_weights([_state(1.0), _state(2.0), _state(6.0)])

    assert torch.equal(averaged["encoder.weight"], torch.full((4, 3), 3.0))
    assert averaged["encoder.half"].dtype == torch.bfloat16
    assert torch.equal(averaged["encoder.half"], torch.full((2,), 3.0, dtype=torch.bfloat16))
    assert torch.equal(averaged["position_ids"], torch.arange(5) + 6)


def test_the_states_passed_in_are_left_unchanged():
    first = _state(1.0)

    mean_weights([first, _state(3.0)])

    assert torch.equal(first["encoder.weight"], torch.full((4, 3), 1.0))


def test_states_are_consumed_one_at_a_time_not_held_together():
    alive_when_yielding: list[int] = []
    references: list[weakref.ref] = []

    def load(value: float) -> dict[str, torch.Tensor]:
        gc.collect()
        alive_when_yielding.append(sum(ref() is not None for ref in references))
        state = _state(value)
        references.append(weakref.ref(state["encoder.weight"]))
        return state

    lazily_loaded = (load(float(value)) for value in range(5))  # as the product reads checkpoints

    averaged = mean_weights(lazily_loaded)

    assert torch.equal(averaged["encoder.weight"], torch.full((4, 3), 2.0))
    # no earlier checkpoint is still referenced while the next one is loaded
    assert alive_when_yielding == [0, 0, 0, 0, 0]


def test_nothing_to_average_is_an_error():
    with pytest.raises(ValueError, match="no weights"):
        mean_weights([])
