"""The report pictures: confusion matrices, and accuracy across production versions (matplotlib's object
API: no pyplot, no global backend state)."""

from pathlib import Path

from retrainer.core.labels import LABELS
from retrainer.records import PRODUCTION_CHANGES, DecisionRecord, RunRecord

CONFUSION_PNG = "confusion_matrix.png"
ACCURACY_PNG = "production_accuracy.png"


def draw_confusion_matrices(record: RunRecord, path: Path) -> Path:
    """Challenger (and champion) confusion matrices side by side, as a PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    panels = [("challenger", record.challenger)] + (
        [("champion", record.champion)] if record.champion else []
    )
    figure = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
    for axes, (name, report) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        axes.imshow(report.confusion_matrix, cmap="Blues")
        darkest = max(max(row) for row in report.confusion_matrix) or 1
        for (row, column), count in _cells(report.confusion_matrix):
            color = "white" if count > darkest / 2 else "black"  # readable on dark and light cells
            axes.text(column, row, str(count), ha="center", va="center", color=color)
        axes.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xlabel="predicted", ylabel="true")
        axes.set_xticklabels(LABELS, rotation=20)
        axes.set_yticklabels(LABELS)
        axes.set_title(f"{name}: accuracy {report.accuracy:.3f}")
    figure.savefig(path, dpi=100)
    return path


def draw_production_accuracy(history: list[DecisionRecord], record: RunRecord, path: Path) -> Path:
    """Accuracy of every version that went to production (at its decision), plus this challenger."""
    from matplotlib.figure import Figure

    points = [
        (r.production_version, r.challenger_accuracy) for r in history if r.action in PRODUCTION_CHANGES
    ]
    figure = Figure(figsize=(7, 3.8), layout="constrained")
    axes = figure.subplots()
    if points:
        axes.plot(
            range(len(points)), [accuracy or 0.0 for _, accuracy in points], marker="o", label="production"
        )
    axes.scatter(
        [len(points)], [record.challenger.accuracy], color="tab:orange", zorder=3, label="this challenger"
    )
    axes.set(xticks=range(len(points) + 1), ylabel="accuracy on its run's eval set", ylim=(0, 1.02))
    axes.set_xticklabels([_short(version) for version, _ in points] + ["this run"], rotation=30, ha="right")
    axes.legend(loc="lower right")
    axes.set_title("Production accuracy across versions")
    figure.savefig(path, dpi=100)
    return path


def _cells(matrix: list[list[int]]):
    return (
        ((row, column), count) for row, counts in enumerate(matrix) for column, count in enumerate(counts)
    )


def _short(version: str | None) -> str:
    return (version or "?")[2:17]
