"""Gate: the promotion rule, a pure function of the two evaluations measured in this run."""

from fractions import Fraction
from math import comb

from pydantic import BaseModel, Field

from retrainer.core.evaluation import ModelEvaluation
from retrainer.settings import GatePolicy


class Decision(BaseModel):
    """Whether to publish the challenger, and every reason why."""

    promote: bool
    forced: bool = False
    reasons: list[str]
    accuracy_delta: float | None = None
    recall_deltas: dict[str, float] = Field(default_factory=dict)
    p_value: float | None = None


def mcnemar_exact_p_value(challenger_correct: list[bool], champion_correct: list[bool]) -> float:
    """Two-sided exact McNemar test on paired per-ticket correctness (binomial on the discordant pairs)."""
    only_challenger = sum(c and not k for c, k in zip(challenger_correct, champion_correct, strict=True))
    only_champion = sum(k and not c for c, k in zip(challenger_correct, champion_correct, strict=True))
    discordant = only_challenger + only_champion
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, i) for i in range(min(only_challenger, only_champion) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**discordant)))  # exact, no float underflow


def decide_promotion(
    challenger: ModelEvaluation,
    champion: ModelEvaluation | None,
    policy: GatePolicy,
    force_reason: str | None = None,
) -> Decision:
    """Apply `policy` to two evaluations on the same eval set; a `force_reason` overrides the rule."""
    if champion is None:
        reason = (
            f"no champion yet: challenger accuracy {challenger.overall.accuracy:.4f} bootstraps production"
        )
        return Decision(promote=True, forced=force_reason is not None, reasons=[reason])
    decision = _compare(challenger, champion, policy)
    if force_reason is None:
        return decision
    forced = f"FORCED promotion ({force_reason}); the rule said {'promote' if decision.promote else 'keep'}"
    return decision.model_copy(
        update={"promote": True, "forced": True, "reasons": [forced, *decision.reasons]}
    )


def _compare(challenger: ModelEvaluation, champion: ModelEvaluation, policy: GatePolicy) -> Decision:
    delta = challenger.overall.accuracy - champion.overall.accuracy
    recall_deltas = {
        label: challenger.overall.recall[label] - champion.overall.recall[label]
        for label in champion.overall.recall
    }
    p_value = mcnemar_exact_p_value(challenger.correct, champion.correct)
    checks = [
        _accuracy_check(challenger, champion, delta, policy),
        *(_recall_check(label, drop, policy) for label, drop in recall_deltas.items()),
        _significance_check(p_value, policy),
    ]
    return Decision(
        promote=all(passed for passed, _ in checks),
        reasons=[reason for _, reason in checks],
        accuracy_delta=delta,
        recall_deltas=recall_deltas,
        p_value=p_value,
    )


def _accuracy_check(
    challenger: ModelEvaluation, champion: ModelEvaluation, delta: float, policy: GatePolicy
) -> tuple[bool, str]:
    passed = delta > policy.min_accuracy_gain
    verdict = "beats" if passed else "does not beat"
    return passed, (
        f"accuracy: challenger {challenger.overall.accuracy:.4f} vs champion {champion.overall.accuracy:.4f} "
        f"(delta {delta:+.4f}) {verdict} the required gain of more than {policy.min_accuracy_gain:.4f}"
    )


def _recall_check(label: str, delta: float, policy: GatePolicy) -> tuple[bool, str]:
    passed = delta >= -policy.max_recall_drop
    verdict = "within" if passed else "EXCEEDS"
    return (
        passed,
        f"recall[{label}] delta {delta:+.4f} {verdict} the allowed drop of {policy.max_recall_drop:.4f}",
    )


def _significance_check(p_value: float, policy: GatePolicy) -> tuple[bool, str]:
    significant = p_value < policy.significance_level
    state = "significant" if significant else "not significant"
    if not policy.require_significance:
        return (
            True,
            f"McNemar exact p={p_value:.4g} ({state} at {policy.significance_level}; reported, not enforced)",
        )
    return significant, f"McNemar exact p={p_value:.4g} ({state} at {policy.significance_level}; enforced)"
