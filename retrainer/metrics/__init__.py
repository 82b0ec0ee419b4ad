"""Metric modules shipped with the project and loaded by path (the Hub is not needed)."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load the project's local `evaluate` module called `name` (e.g. ``"accuracy"``)."""
    module_dir = METRICS_DIR / name
    if not (module_dir / f"{name}.py").is_file():
        raise FileNotFoundError(f"no local evaluate module named {name!r} in {METRICS_DIR}")
    return evaluate.load(str(module_dir))
