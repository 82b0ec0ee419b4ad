"""Metric modules shipped with the project and loaded by path (the Hub is not needed)."""

from pathlib import Path

import datasets
import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load the project's local `evaluate` module called `name` (e.g. ``"accuracy"``)."""
    module_dir = METRICS_DIR / name
    if not (module_dir / f"{name}.py").is_file():
        raise FileNotFoundError(f"no local evaluate module named {name!r} in {METRICS_DIR}")
    return evaluate.load(str(module_dir))


def label_id_metric_info(description: str, inputs_description: str) -> evaluate.MetricInfo:
    """The `MetricInfo` of a metric over integer label ids (``predictions`` vs ``references``)."""
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features(
            {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
        ),
    )
