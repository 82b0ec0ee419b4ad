"""Weight averaging. Needs torch only, so that a bare GPU machine can run it too
(benchmarks/experiments/recipe_sweep.py mirrors the product's training there)."""

from collections.abc import Iterable

import torch


def mean_weights(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of model state dicts, each tensor in its own dtype; integer buffers
    (position ids, token types) are taken from the last state, as averaging them means nothing.

    Streams: it holds a running float32 sum, not the states, so averaging K checkpoints loaded
    lazily (a generator) needs the memory of about two models, not K+1.
    """
    total: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor | torch.dtype] = {}  # integer buffers, and the dtype of the rest
    count = 0
    for state in states:
        for name, tensor in state.items():
            if tensor.is_floating_point():
                # the first state is copied: adding into a tensor of the caller's would change it
                total[name] = total[name].add_(tensor.float()) if name in total else tensor.float().clone()
                kept[name] = tensor.dtype
            else:
                kept[name] = tensor
        count += 1
        del state  # let a lazily loaded state go before the next one is read
    if not count:
        raise ValueError("no weights to average")
    return {
        # in place: the sum is ours, and a float32 model then needs no third copy of its weights
        name: total[name].div_(count).to(kept_value) if isinstance(kept_value, torch.dtype) else kept_value
        for name, kept_value in kept.items()
    }
