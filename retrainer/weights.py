"""Weight averaging. Needs torch only, so that a bare GPU machine can run it too
(benchmarks/recipe_sweep.py mirrors the product's training there)."""

import torch


def mean_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of model state dicts, each tensor in its own dtype; integer buffers
    (position ids, token types) are taken from the last state, as averaging them means nothing."""
    return {
        name: torch.stack([state[name].float() for state in states]).mean(dim=0).to(last.dtype)
        if last.is_floating_point()
        else last
        for name, last in states[-1].items()
    }
