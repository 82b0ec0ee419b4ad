"""Per-class precision, recall and F1, macro F1 and the confusion matrix, as a local `evaluate` module.

Loaded by path through `evaluate.load(<this folder>)`; see `retrainer.core.metrics.load_metric`.
"""

import evaluate
import numpy as np

from retrainer.core.metrics import label_id_metric_info

_DESCRIPTION = "Confusion matrix, per-class precision/recall/F1 and macro F1 for single-label classification."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
    num_labels (int): size of the label set (ids are 0 .. num_labels-1).
Returns:
    confusion_matrix (list of list of int): rows are true labels, columns predicted labels.
    precision, recall, f1 (list of float): per label id; 0.0 where undefined (no predictions/support).
    support (list of int): true examples per label id.
    macro_f1 (float): unweighted mean of the per-label F1.
"""


class ClassificationReport(evaluate.Metric):
    def _info(self):
        return label_id_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, num_labels):
        matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
        np.add.at(matrix, (np.asarray(references), np.asarray(predictions)), 1)
        true_positives = np.diag(matrix).astype(float)
        predicted = matrix.sum(axis=0)
        support = matrix.sum(axis=1)
        precision = np.divide(true_positives, predicted, out=np.zeros(num_labels), where=predicted > 0)
        recall = np.divide(true_positives, support, out=np.zeros(num_labels), where=support > 0)
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_labels), where=denominator > 0)
        return {
            "confusion_matrix": matrix.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
            "macro_f1": float(f1.mean()),
        }
