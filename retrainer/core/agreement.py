"""Label agreement: how often the champion's predictions agree with the labels of the tickets it has not
seen (new to it), against the established eval tickets (held out from its training, labelled before it).

A batch whose labels were changed on purpose ("poisoned") is consistent with itself, so a challenger
trained and scored on it wins; the champion, trained before it, is the one witness that disagrees. The
gate (`retrainer.core.gate`) compares what is measured here. Counts only: no ticket text.
"""

from collections.abc import Sequence

from pydantic import BaseModel, Field

from retrainer.core.labels import LABELS


class BatchAgreement(BaseModel):
    """The champion's agreement with one new batch's labels."""

    tickets: int
    agreeing: int

    @property
    def agreement(self) -> float:
        return self.agreeing / self.tickets if self.tickets else 1.0


class LabelAgreement(BaseModel):
    """The champion's predictions against the labels, as two confusion matrices (rows: the champion's
    prediction, columns: the label; `LABELS` order): on the tickets new to it, and on the established eval
    tickets. `batches`: per new batch (source key)."""

    new: list[list[int]]
    established: list[list[int]]
    batches: dict[str, BatchAgreement] = Field(default_factory=dict)
    extra_predictions: int = Field(
        0, description="new tickets outside the eval split the champion scored for this check: its cost"
    )
    extra_seconds: float = Field(0.0, description="how long scoring them took")

    @property
    def new_tickets(self) -> int:
        return _total(self.new)

    @property
    def established_tickets(self) -> int:
        return _total(self.established)

    @property
    def new_agreeing(self) -> int:
        return _agreeing(self.new)

    @property
    def established_agreeing(self) -> int:
        return _agreeing(self.established)

    @property
    def new_agreement(self) -> float | None:
        return _agreement(self.new)

    @property
    def established_agreement(self) -> float | None:
        return _agreement(self.established)

    def lowest_batches(self, count: int) -> list[tuple[str, BatchAgreement]]:
        """The `count` new batches with the lowest agreement (the fewest tickets first on a tie)."""
        ranked = sorted(self.batches.items(), key=lambda item: (item[1].agreement, item[1].tickets, item[0]))
        return ranked[:count]

    def summary(self) -> dict:
        """The figures for the run record, ``metrics.json`` and the report (counts and shares only)."""
        return {
            "new_tickets": self.new_tickets,
            "new_agreement": self.new_agreement,
            "established_tickets": self.established_tickets,
            "established_agreement": self.established_agreement,
            "extra_predictions": self.extra_predictions,
            "extra_seconds": round(self.extra_seconds, 2),
        }


def measure_agreement(
    new_predicted: Sequence[int],
    new_labels: Sequence[int],
    new_sources: Sequence[str],
    established_predicted: Sequence[int],
    established_labels: Sequence[int],
    extra_predictions: int = 0,
    extra_seconds: float = 0.0,
) -> LabelAgreement:
    """The champion's agreement from its predicted and the labelled ids (`LABELS` order), per ticket; each
    new ticket's source key names its batch."""
    batches: dict[str, BatchAgreement] = {}
    for predicted, label, source in zip(new_predicted, new_labels, new_sources, strict=True):
        seen = batches.get(source, BatchAgreement(tickets=0, agreeing=0))
        batches[source] = BatchAgreement(
            tickets=seen.tickets + 1, agreeing=seen.agreeing + (predicted == label)
        )
    return LabelAgreement(
        new=_confusion(new_predicted, new_labels),
        established=_confusion(established_predicted, established_labels),
        batches=batches,
        extra_predictions=extra_predictions,
        extra_seconds=extra_seconds,
    )


def _confusion(predicted: Sequence[int], labels: Sequence[int]) -> list[list[int]]:
    matrix = [[0] * len(LABELS) for _ in LABELS]
    for row, column in zip(predicted, labels, strict=True):
        matrix[row][column] += 1
    return matrix


def _total(matrix: list[list[int]]) -> int:
    return sum(map(sum, matrix))


def _agreeing(matrix: list[list[int]]) -> int:
    return sum(matrix[index][index] for index in range(len(matrix)))


def _agreement(matrix: list[list[int]]) -> float | None:
    total = _total(matrix)
    return _agreeing(matrix) / total if total else None
