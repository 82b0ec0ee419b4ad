"""Where a fine-tune's time goes: seconds per phase, for ``training.json`` (``seconds``) and the profile
benchmark (benchmarks/profile_fine_tune.py)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback


class PhaseClock:
    """Seconds spent in each phase of one fine-tune: phases timed around the code, and, inside the
    Trainer's loop, evaluation and checkpoint saving read through a callback (the rest of the loop is the
    training steps)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name` (added to what the phase took before)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` more in phase `name`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def callback(self) -> TrainerCallback:
        """The Trainer callback that times evaluation, checkpoint saves and the end of the loop."""
        return _LoopClock(self)

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase, the Trainer's loop split into steps, evaluation, saves and its end."""
        phases = dict(self.seconds)
        inside = sum(phases.get(name, 0.0) for name in _LOOP_PHASES)
        if "train_loop" in phases:
            phases["train_steps"] = max(0.0, phases.pop("train_loop") - inside)
        return {name: round(seconds, 3) for name, seconds in phases.items()}


_LOOP_PHASES = ("evaluate", "checkpoint_save", "train_end")


class _LoopClock(TrainerCallback):
    """Evaluation: the Trainer's own ``eval_runtime``; a save: from the end of that evaluation to the
    save callbacks (the checkpoints' upload hand-off included); the end: from the last save to the end
    of training (waiting for checkpoint uploads included)."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self.mark = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.clock.add("evaluate", (metrics or {}).get("eval_runtime", 0.0))
        self.mark = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        self.clock.add("checkpoint_save", time.perf_counter() - self.mark)
        self.mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.clock.add("train_end", time.perf_counter() - self.mark)
