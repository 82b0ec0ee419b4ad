"""ticket-retrainer: keeps a support-ticket classifier fresh (see README.md)."""

LABELS: tuple[str, ...] = ("bug", "feature_request", "general_inquiry")
"""The label set, in the order of the classifier's output ids."""

__version__ = "0.1.0"
