"""The promotion rule: a pure function, tested as a table."""

import pytest

from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.gate import decide_promotion, mcnemar_exact_p_value
from retrainer.core.labels import LABELS
from retrainer.core.scoring import evaluation_report
from retrainer.settings import GatePolicy

BUG, FEATURE, INQUIRY = range(3)


def _evaluation(predicted: list[int], references: list[int]) -> ModelEvaluation:
    return ModelEvaluation(
        overall=evaluation_report(predicted, references),
        correct=[p == r for p, r in zip(predicted, references, strict=True)],
    )


def _pair(challenger_right: int, champion_right: int, both_right: int = 60, both_wrong: int = 0):
    """Paired predictions on balanced references: how many tickets only one model gets right."""
    references = [index % 3 for index in range(challenger_right + champion_right + both_right + both_wrong)]
    wrong = [(label + 1) % 3 for label in references]
    challenger, champion = [], []
    for index, label in enumerate(references):
        if index < challenger_right:
            challenger.append(label), champion.append(wrong[index])
        elif index < challenger_right + champion_right:
            challenger.append(wrong[index]), champion.append(label)
        elif index < challenger_right + champion_right + both_right:
            challenger.append(label), champion.append(label)
        else:
            challenger.append(wrong[index]), champion.append(wrong[index])
    return _evaluation(challenger, references), _evaluation(champion, references)


LENIENT = GatePolicy(max_recall_drop=1.0)


@pytest.mark.parametrize(
    ("challenger_right", "champion_right", "policy", "promote"),
    [
        (6, 0, LENIENT, True),  # strictly better
        (3, 3, LENIENT, False),  # a tie keeps the champion
        (0, 6, LENIENT, False),  # worse
        (6, 3, GatePolicy(max_recall_drop=1.0, min_accuracy_gain=0.05), False),  # gain 0.043 is not > 0.05
        (9, 0, GatePolicy(max_recall_drop=1.0, min_accuracy_gain=0.05), True),  # gain 0.13 > 0.05
        (6, 3, GatePolicy(max_recall_drop=1.0, require_significance=True), False),  # p = 0.51
        (12, 0, GatePolicy(max_recall_drop=1.0, require_significance=True), True),  # p = 0.00049
        (6, 3, GatePolicy(max_recall_drop=1.0, require_significance=False), True),  # p only reported
    ],
)
def test_gate_table(challenger_right, champion_right, policy, promote):
    challenger, champion = _pair(challenger_right, champion_right)

    decision = decide_promotion(challenger, champion, policy)

    assert decision.promote is promote
    assert decision.accuracy_delta == pytest.approx(challenger.overall.accuracy - champion.overall.accuracy)
    assert any("McNemar exact p=" in reason for reason in decision.reasons)
    assert not decision.forced


def test_a_recall_drop_beyond_the_tolerance_blocks_a_more_accurate_challenger():
    references = [BUG] * 10 + [FEATURE] * 10 + [INQUIRY] * 10
    champion = _evaluation([BUG] * 10 + [BUG] * 10 + [BUG] * 10, references)  # all bug: recall[bug] = 1
    challenger = _evaluation([BUG] * 8 + [FEATURE, INQUIRY] + [FEATURE] * 10 + [INQUIRY] * 10, references)

    strict = decide_promotion(challenger, champion, GatePolicy(max_recall_drop=0.1))
    lenient = decide_promotion(challenger, champion, GatePolicy(max_recall_drop=0.25))

    assert challenger.overall.accuracy > champion.overall.accuracy
    assert strict.promote is False
    assert strict.recall_deltas["bug"] == pytest.approx(-0.2)
    assert any("recall[bug]" in reason and "EXCEEDS" in reason for reason in strict.reasons)
    assert lenient.promote is True


def test_no_champion_bootstraps_and_a_forced_promotion_is_marked_with_its_reason():
    challenger, champion = _pair(0, 6)

    assert decide_promotion(challenger, None, GatePolicy()).promote is True
    forced = decide_promotion(challenger, champion, GatePolicy(), force_reason="hotfix for outage #42")
    assert forced.promote and forced.forced
    assert "hotfix for outage #42" in forced.reasons[0] and "the rule said keep" in forced.reasons[0]


@pytest.mark.parametrize(
    ("only_challenger", "only_champion", "expected"),
    [(0, 0, 1.0), (5, 5, 1.0), (10, 2, 0.03857421875), (0, 7, 0.015625), (12, 0, 0.00048828125)],
)
def test_exact_mcnemar_matches_the_binomial_test(only_challenger, only_champion, expected):
    challenger = [True] * only_challenger + [False] * only_champion + [True] * 50
    champion = [False] * only_challenger + [True] * only_champion + [True] * 50

    assert mcnemar_exact_p_value(challenger, champion) == pytest.approx(expected)


def test_mcnemar_stays_exact_for_large_eval_sets():
    p_value = mcnemar_exact_p_value([True] * 700 + [False] * 600, [False] * 700 + [True] * 600)
    assert p_value == pytest.approx(0.0060157938610449, rel=1e-9)  # scipy.stats.binomtest gives the same


def test_evaluation_report_per_class_numbers():
    report = evaluation_report([BUG, BUG, FEATURE, INQUIRY, INQUIRY], [BUG, FEATURE, FEATURE, INQUIRY, BUG])

    assert report.accuracy == pytest.approx(0.6)
    assert report.precision == {"bug": 0.5, "feature_request": 1.0, "general_inquiry": 0.5}
    assert report.recall == {"bug": 0.5, "feature_request": 0.5, "general_inquiry": 1.0}
    assert report.confusion_matrix == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert report.macro_f1 == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert list(report.support) == list(LABELS)
