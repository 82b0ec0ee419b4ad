"""What scoring a model measures: plain data, light to import (the registry and reports read it)."""

from pydantic import BaseModel, Field


class EvalReport(BaseModel):
    """A model's metrics on one set of tickets."""

    examples: int
    accuracy: float
    macro_f1: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    confusion_matrix: list[list[int]] = Field(description="rows: true label, columns: predicted label")


class ModelEvaluation(BaseModel):
    """A model's score on the eval split, on the eval rows that arrived in this run, and on the established
    ones (from batches the champion was trained on: labelled before it, and before this run)."""

    overall: EvalReport
    new_data: EvalReport | None = None
    established: EvalReport | None = None
    correct: list[bool] = Field(description="per eval ticket, in eval order: for the paired test")
    established_rows: list[bool] = Field(
        default_factory=list, description="per eval ticket, whether it is established (`established`)"
    )
    predicted: list[int] = Field(
        default_factory=list, description="per eval ticket, the predicted label id: for the label check"
    )
