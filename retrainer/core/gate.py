"""Gate: the promotion rule, a pure function of the two evaluations measured in this run."""

from itertools import permutations

import numpy as np
from pydantic import BaseModel, Field
from scipy.stats import binom, hypergeom

from retrainer.core.agreement import LabelAgreement
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.labels import LABELS
from retrainer.settings import GatePolicy

NAMED_BATCHES = 3
"""How many batches a label alarm names (the lowest agreement first)."""


class Decision(BaseModel):
    """Whether to publish the challenger, and every reason why."""

    promote: bool
    forced: bool = False
    reasons: list[str]
    accuracy_delta: float | None = None
    recall_deltas: dict[str, float] = Field(default_factory=dict)
    p_value: float | None = None
    established_accuracy_delta: float | None = Field(
        None, description="challenger minus champion accuracy on the established eval tickets"
    )
    label_alarm: bool = Field(False, description="the label check found the new labels suspect")
    suspect_batches: list[str] = Field(default_factory=list, description="named by a label alarm")


def mcnemar_exact_p_value(
    challenger_correct: list[bool], champion_correct: list[bool], one_sided: bool = False
) -> float:
    """Exact McNemar test on paired per-ticket correctness (binomial on the discordant pairs): two-sided,
    or `one_sided`: the chance of the challenger winning this few of them were both models as good.
    scipy's binomial distribution: exact sums of big binomial coefficients took seconds at 50,000 tickets."""
    challenger, champion = np.asarray(challenger_correct, bool), np.asarray(champion_correct, bool)
    only_challenger = int((challenger & ~champion).sum())
    only_champion = int((champion & ~challenger).sum())
    discordant = only_challenger + only_champion
    if discordant == 0:
        return 1.0
    fewest = only_challenger if one_sided else min(only_challenger, only_champion)
    sides = 1 if one_sided else 2
    return float(min(1.0, sides * binom.cdf(fewest, discordant, 0.5)))


def decide_promotion(
    challenger: ModelEvaluation,
    champion: ModelEvaluation | None,
    policy: GatePolicy,
    force_reason: str | None = None,
    agreement: LabelAgreement | None = None,
) -> Decision:
    """Apply `policy` to two evaluations on the same eval set; a `force_reason` overrides the rule.

    `agreement`: the champion's predictions against the labels of the tickets new to it and of the
    established eval tickets (`retrainer.core.agreement`); with it, the label check applies too (a
    forced promotion still reports its alarm)."""
    if champion is None:
        reason = (
            f"no champion yet: challenger accuracy {challenger.overall.accuracy:.4f} bootstraps production"
        )
        return Decision(promote=True, forced=force_reason is not None, reasons=[reason])
    decision = _compare(challenger, champion, policy, agreement)
    if force_reason is None:
        return decision
    forced = f"FORCED promotion ({force_reason}); the rule said {'promote' if decision.promote else 'keep'}"
    return decision.model_copy(
        update={"promote": True, "forced": True, "reasons": [forced, *decision.reasons]}
    )


def _compare(
    challenger: ModelEvaluation,
    champion: ModelEvaluation,
    policy: GatePolicy,
    agreement: LabelAgreement | None,
) -> Decision:
    delta = challenger.overall.accuracy - champion.overall.accuracy
    recall_deltas = {
        label: challenger.overall.recall[label] - champion.overall.recall[label]
        for label in champion.overall.recall
    }
    p_value = mcnemar_exact_p_value(challenger.correct, champion.correct)
    established_delta = (
        challenger.established.accuracy - champion.established.accuracy
        if challenger.established and champion.established
        else None
    )
    label_checks = label_agreement_checks(agreement, policy)
    checks = [
        _accuracy_check(challenger, champion, delta, policy),
        *(_recall_check(label, drop, policy) for label, drop in recall_deltas.items()),
        _significance_check(p_value, policy),
        _established_check(challenger, champion, established_delta, policy),
        *label_checks,
    ]
    alarm = not all(passed for passed, _ in label_checks)
    suspects = [key for key, _ in agreement.lowest_batches(NAMED_BATCHES)] if alarm and agreement else []
    reasons = [reason for _, reason in checks]
    if suspects:
        reasons.append(_suspects_reason(agreement))
    return Decision(
        promote=all(passed for passed, _ in checks),
        reasons=reasons,
        accuracy_delta=delta,
        recall_deltas=recall_deltas,
        p_value=p_value,
        established_accuracy_delta=established_delta,
        label_alarm=alarm,
        suspect_batches=suspects,
    )


def label_agreement_checks(agreement: LabelAgreement | None, policy: GatePolicy) -> list[tuple[bool, str]]:
    """The label check: (passed, reason) for the champion's overall agreement and for the class pair whose
    share rose most (and every other pair beyond the policy). A relabelled batch agrees with a challenger
    trained on it, never with the champion trained before it."""
    if agreement is None:
        return []
    if agreement.established_tickets < policy.label_check_min_tickets:
        return [
            (
                True,
                f"label check: not compared ({agreement.established_tickets} established eval ticket(s), "
                f"fewer than {policy.label_check_min_tickets})",
            )
        ]
    return [_overall_agreement_check(agreement, policy), *_flip_checks(agreement, policy)]


def fisher_greater_p_value(hits: int, tickets: int, reference_hits: int, reference_tickets: int) -> float:
    """One-sided Fisher exact test: the chance that `tickets` drawn from both groups together hold at
    least `hits` of all the hits, were the two shares the same (the hypergeometric tail)."""
    total, all_hits = tickets + reference_tickets, hits + reference_hits
    return float(hypergeom.sf(hits - 1, total, all_hits, tickets))


def _overall_agreement_check(agreement: LabelAgreement, policy: GatePolicy) -> tuple[bool, str]:
    new, established = agreement.new_tickets, agreement.established_tickets
    if new < policy.label_check_min_tickets:
        return True, f"label check: {new} new ticket(s), under {policy.label_check_min_tickets}: not compared"
    drop = agreement.established_agreement - agreement.new_agreement
    p_value = fisher_greater_p_value(
        new - agreement.new_agreeing, new, established - agreement.established_agreeing, established
    )
    passed = not (drop > policy.max_new_label_disagreement_drop and p_value < policy.label_check_significance)
    verdict = "within" if passed else "EXCEEDS"
    return passed, (
        f"label agreement: the champion agrees with {agreement.new_agreement:.1%} of the {new} ticket(s) new "
        f"to it vs {agreement.established_agreement:.1%} of the {established} established eval ticket(s) "
        f"(drop {drop:+.4f}, p={p_value:.2g}) {verdict} the allowed drop of "
        f"{policy.max_new_label_disagreement_drop:.4f}"
    )


def _flip_checks(agreement: LabelAgreement, policy: GatePolicy) -> list[tuple[bool, str]]:
    """Per class X the champion predicts and label Y != X: the share of its X tickets labelled Y, new
    against established. A targeted relabelling (bugs turned feature requests) moves one pair a lot
    while the overall agreement moves little. Reported: the pair that rose most, and every failing one."""
    pairs = [
        (predicted, label)
        for predicted, label in permutations(range(len(LABELS)), 2)
        if sum(agreement.new[predicted]) >= policy.label_check_min_tickets
        and sum(agreement.established[predicted]) > 0
    ]
    if not pairs:
        minimum = policy.label_check_min_tickets
        return [(True, f"label check per class: no class predicted for {minimum}+ new tickets")]
    level = policy.label_check_significance / len(pairs)  # Bonferroni over the pairs compared
    results = [_flip_check(agreement, predicted, label, level, policy) for predicted, label in pairs]
    worst = max(results, key=lambda result: result[2])
    return [
        (passed, reason) for passed, reason, rise in results if not passed or (passed, reason, rise) == worst
    ]


def _flip_check(
    agreement: LabelAgreement, predicted: int, label: int, level: float, policy: GatePolicy
) -> tuple[bool, str, float]:
    new_row, established_row = agreement.new[predicted], agreement.established[predicted]
    tickets, reference_tickets = sum(new_row), sum(established_row)
    share, reference = new_row[label] / tickets, established_row[label] / reference_tickets
    rise = share - reference
    p_value = fisher_greater_p_value(new_row[label], tickets, established_row[label], reference_tickets)
    passed = not (rise > policy.max_label_flip_rise and p_value < level)
    verdict = "within" if passed else "EXCEEDS"
    return (
        passed,
        f"label flips: of the {tickets} new ticket(s) the champion calls {LABELS[predicted]}, {share:.1%} "
        f"are labelled {LABELS[label]} vs {reference:.1%} of {reference_tickets} established (rise "
        f"{rise:+.4f}, p={p_value:.2g} at level {level:.2g}) {verdict} the allowed rise of "
        f"{policy.max_label_flip_rise:.4f}",
        rise,
    )


def _established_check(
    challenger: ModelEvaluation, champion: ModelEvaluation, delta: float | None, policy: GatePolicy
) -> tuple[bool, str]:
    """The challenger on the eval tickets labelled before the run: a challenger trained on relabelled
    tickets loses there. A loss counts beyond the margin and when significant (one-sided exact McNemar at
    `significance_level`): a few tickets of a small eval set are chance."""
    if delta is None:
        return True, "established eval tickets: none (every eval ticket is new to the champion): not compared"
    rows = challenger.established_rows
    p_value = mcnemar_exact_p_value(
        [c for c, chosen in zip(challenger.correct, rows, strict=True) if chosen],
        [k for k, chosen in zip(champion.correct, rows, strict=True) if chosen],
        one_sided=True,
    )
    passed = not (delta < -policy.max_established_accuracy_drop and p_value < policy.significance_level)
    verdict = "within" if passed else "EXCEEDS"
    return passed, (
        f"established eval tickets ({challenger.established.examples}): challenger accuracy delta "
        f"{delta:+.4f} (one-sided p={p_value:.2g}) {verdict} the allowed drop of "
        f"{policy.max_established_accuracy_drop:.4f}"
    )


def _suspects_reason(agreement: LabelAgreement) -> str:
    named = ", ".join(
        f"{key} ({batch.agreement:.1%} of {batch.tickets})"
        for key, batch in agreement.lowest_batches(NAMED_BATCHES)
    )
    return (
        f"SUSPECT LABELS: the new labels disagree with the champion beyond the policy; lowest agreement: "
        f"{named}. Check these batches' labels: re-send them corrected (a re-sent ticket's newer row "
        "replaces it), or, if the change is genuine, run with force=true and a force_reason"
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
