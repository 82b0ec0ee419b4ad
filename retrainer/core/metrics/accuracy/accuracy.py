"""Accuracy as a local `evaluate` module, so scoring never needs the Hugging Face Hub.

Loaded by path through `evaluate.load(<this folder>)`; see `retrainer.core.metrics.load_metric`.
"""

import evaluate

from retrainer.core.metrics import label_id_metric_info

_DESCRIPTION = "Accuracy: the share of predictions equal to the reference label."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
Returns:
    accuracy (float): correct / total, in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return label_id_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        total = len(references)
        if total == 0:
            raise ValueError("accuracy needs at least one reference")
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": correct / total}
