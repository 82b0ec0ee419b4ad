"""Accuracy as a local `evaluate` module, so scoring never needs the Hugging Face Hub.

Loaded by path through `evaluate.load(<this folder>)`; see `retrainer.metrics.load_metric`.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the share of predictions equal to the reference label."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
Returns:
    accuracy (float): correct / total, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        total = len(references)
        if total == 0:
            raise ValueError("accuracy needs at least one reference")
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": correct / total}
