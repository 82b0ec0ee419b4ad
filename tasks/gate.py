"""Gate: the promotion rule, a pure function of the two scores measured in this run."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    """Whether to publish the challenger, and every reason why."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide_promotion(challenger_accuracy: float, champion_accuracy: float | None) -> Decision:
    """Promote only if the challenger is strictly more accurate than the champion on the same eval set.

    With no champion (the first run), the challenger is promoted.
    """
    if champion_accuracy is None:
        return Decision(
            True, [f"no champion yet: challenger accuracy {challenger_accuracy:.4f} bootstraps it"]
        )
    comparison = f"challenger accuracy {challenger_accuracy:.4f} vs champion {champion_accuracy:.4f}"
    if challenger_accuracy > champion_accuracy:
        return Decision(True, [f"{comparison}: challenger is better"])
    return Decision(False, [f"{comparison}: challenger is not better, champion kept"])
