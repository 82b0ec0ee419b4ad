"""The label set the classifier predicts."""

LABELS: tuple[str, ...] = ("bug", "feature_request", "general_inquiry")
"""The label set, in the order of the classifier's output ids."""

LABEL_TO_ID: dict[str, int] = {label: index for index, label in enumerate(LABELS)}
"""Label name -> output id."""
