"""The promotion rule: a pure function, tested as a table."""

import pytest

from retrainer.core.agreement import BatchAgreement, LabelAgreement, measure_agreement
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.gate import decide_promotion, fisher_greater_p_value, mcnemar_exact_p_value
from retrainer.core.labels import LABELS
from retrainer.core.scoring import evaluation_report
from retrainer.settings import GatePolicy

BUG, FEATURE, INQUIRY = range(3)


def _evaluation(
    predicted: list[int], references: list[int], established: list[bool] | None = None
) -> ModelEvaluation:
    chosen = [index for index, row in enumerate(established or []) if row]
    return ModelEvaluation(
        overall=evaluation_report(predicted, references),
        established=evaluation_report([predicted[i] for i in chosen], [references[i] for i in chosen])
        if chosen
        else None,
        correct=[p == r for p, r in zip(predicted, references, strict=True)],
        established_rows=established or [],
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


@pytest.mark.parametrize(
    ("only_challenger", "only_champion", "expected"),
    [(2, 10, 79 / 4096), (0, 8, 1 / 256), (10, 2, 4083 / 4096), (0, 0, 1.0)],
)
def test_one_sided_mcnemar_is_the_chance_of_the_challenger_winning_this_few(
    only_challenger, only_champion, expected
):
    challenger = [True] * only_challenger + [False] * only_champion + [True] * 50
    champion = [False] * only_challenger + [True] * only_champion + [True] * 50

    assert mcnemar_exact_p_value(challenger, champion, one_sided=True) == pytest.approx(expected)


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


# --- the label check: the champion's agreement with the labels new to it ------------------------------

ESTABLISHED = [[90, 5, 5], [5, 90, 5], [5, 5, 90]]  # rows: the champion's prediction, columns: the label
ORDINARY = [[88, 6, 6], [6, 88, 6], [4, 6, 90]]  # a night like the others
TARGETED = [[60, 35, 5], [5, 90, 5], [5, 5, 90]]  # 35% of the champion's bugs now labelled feature_request
SPREAD = [[75, 12, 13], [12, 75, 13], [12, 13, 75]]  # every class loses agreement: overall drop 0.15
NEW_KINDS = [[82, 9, 9], [9, 82, 9], [8, 9, 83]]  # unfamiliar tickets: the champion errs more, evenly
SMALL_NIGHT = [[16, 4, 0], [1, 20, 1], [0, 1, 20]]  # 4 of 20 bugs relabelled: not significant on 20
FEW_ESTABLISHED = [[5, 0, 0], [0, 5, 0], [0, 0, 5]]  # 15 established eval tickets: too few to compare


def _agreement(new: list[list[int]], established: list[list[int]] = ESTABLISHED) -> LabelAgreement:
    """An agreement whose new tickets come from two batches: `good.csv` agreeing fully, `odd.csv` less."""
    agreeing = sum(new[index][index] for index in range(3))
    total = sum(map(sum, new))
    batches = {
        "incoming/good.csv": BatchAgreement(tickets=50, agreeing=50),
        "incoming/odd.csv": BatchAgreement(tickets=total - 50, agreeing=agreeing - 50),
    }
    return LabelAgreement(new=new, established=established, batches=batches)


@pytest.mark.parametrize(
    ("new", "established", "promote", "failing"),
    [
        (ORDINARY, ESTABLISHED, True, []),
        (
            TARGETED,
            ESTABLISHED,
            False,
            ["label flips: of the 100 new ticket(s) the champion calls bug, 35.0%"],
        ),
        (SPREAD, ESTABLISHED, False, ["label agreement: the champion agrees with 75.0% of the 300"]),
        (NEW_KINDS, ESTABLISHED, True, []),  # a legitimate shift within the limits still promotes
        (SMALL_NIGHT, ESTABLISHED, True, []),  # rise 0.15, p=0.041 > 0.05 / 6 pairs: chance on 20
        (TARGETED, FEW_ESTABLISHED, True, []),  # nothing to compare with: not compared, said so
    ],
    ids=["ordinary", "targeted-flip", "spread-drop", "new-kinds", "small-night", "few-established"],
)
def test_label_check_table(new, established, promote, failing):
    challenger, champion = _pair(6, 0)  # the challenger wins on the eval split, as a poisoned one does

    decision = decide_promotion(challenger, champion, LENIENT, agreement=_agreement(new, established))

    assert decision.promote is promote
    assert decision.label_alarm is not promote
    exceeded = [reason for reason in decision.reasons if "EXCEEDS" in reason]
    assert len(exceeded) == len(failing)
    assert all(reason.startswith(prefix) for reason, prefix in zip(exceeded, failing, strict=True))
    assert any(reason.startswith("label") for reason in decision.reasons)  # always said, passed or not
    if promote:
        assert decision.suspect_batches == []
    else:  # the batches named, the lowest agreement first
        assert decision.suspect_batches == ["incoming/odd.csv", "incoming/good.csv"]
        assert "SUSPECT LABELS" in decision.reasons[-1] and "incoming/odd.csv (" in decision.reasons[-1]


def test_the_targeted_flip_passes_the_overall_agreement_check_alone():
    decision = decide_promotion(*_pair(6, 0), LENIENT, agreement=_agreement(TARGETED))

    overall = next(reason for reason in decision.reasons if reason.startswith("label agreement"))
    assert "drop +0.1000" in overall and "within" in overall  # what an overall check alone would miss
    assert not decision.promote


def _established_pair(only_champion_right: int, only_challenger_right: int, established: bool = True):
    """100 established eval tickets (bugs) on which each model misses the given few the other gets
    right, then 40 new ones the challenger gets right and the champion only 10 of: it wins overall."""
    references = [BUG] * 140
    challenger = [FEATURE] * only_champion_right + [BUG] * (100 - only_champion_right) + [BUG] * 40
    champion = (
        [BUG] * only_champion_right
        + [FEATURE] * only_challenger_right
        + [BUG] * (100 - only_champion_right - only_challenger_right)
        + [BUG] * 10
        + [FEATURE] * 30
    )
    rows = [established] * 100 + [False] * 40
    return _evaluation(challenger, references, rows), _evaluation(champion, references, rows)


@pytest.mark.parametrize(
    ("only_champion_right", "only_challenger_right", "policy", "promote"),
    [
        (2, 0, LENIENT, True),  # 0.02 worse: within the default 0.03
        (8, 0, LENIENT, False),  # 0.08 worse on the tickets labelled before the run, p=0.0039
        (8, 0, GatePolicy(max_recall_drop=1.0, max_established_accuracy_drop=0.1), True),
        (6, 2, LENIENT, True),  # 0.04 worse, but 6 against 2 tickets is chance (p=0.14)
    ],
)
def test_the_challenger_may_not_be_significantly_worse_on_the_established_eval_tickets(
    only_champion_right, only_challenger_right, policy, promote
):
    challenger, champion = _established_pair(only_champion_right, only_challenger_right)

    decision = decide_promotion(challenger, champion, policy)

    assert challenger.overall.accuracy > champion.overall.accuracy
    assert decision.promote is promote
    delta = decision.established_accuracy_delta
    assert delta == pytest.approx((only_challenger_right - only_champion_right) / 100)
    assert any(reason.startswith("established eval tickets (100)") for reason in decision.reasons)
    assert not decision.label_alarm  # the challenger's fault, not the labels'


def test_without_established_eval_tickets_the_comparison_is_skipped_and_said():
    challenger, champion = _established_pair(8, 0, established=False)

    decision = decide_promotion(challenger, champion, LENIENT)

    assert decision.promote and decision.established_accuracy_delta is None
    assert any("established eval tickets: none" in reason for reason in decision.reasons)


def test_a_forced_promotion_keeps_the_label_alarm():
    decision = decide_promotion(*_pair(6, 0), LENIENT, "hotfix", agreement=_agreement(TARGETED))

    assert decision.promote and decision.forced and decision.label_alarm
    assert decision.suspect_batches[0] == "incoming/odd.csv"


def test_the_label_agreement_is_measured_per_batch_from_predictions_and_labels():
    agreement = measure_agreement(
        new_predicted=[BUG, BUG, BUG, FEATURE],
        new_labels=[BUG, FEATURE, FEATURE, FEATURE],
        new_sources=["incoming/a.csv", "incoming/b.csv", "incoming/b.csv", "incoming/a.csv"],
        established_predicted=[BUG, INQUIRY],
        established_labels=[BUG, INQUIRY],
    )

    assert agreement.new == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert (agreement.new_agreement, agreement.established_agreement) == (0.5, 1.0)
    assert [key for key, _ in agreement.lowest_batches(3)] == ["incoming/b.csv", "incoming/a.csv"]
    assert agreement.batches["incoming/b.csv"].agreement == 0.0


@pytest.mark.parametrize(
    ("hits", "tickets", "reference_hits", "reference_tickets"),
    [(6, 20, 5, 100), (35, 100, 5, 100), (0, 10, 3, 10), (10, 10, 0, 10), (3, 40, 9, 120)],
)
def test_fisher_exact_matches_scipy(hits, tickets, reference_hits, reference_tickets):
    from scipy.stats import fisher_exact

    table = [[hits, tickets - hits], [reference_hits, reference_tickets - reference_hits]]
    expected = fisher_exact(table, alternative="greater").pvalue

    assert fisher_greater_p_value(hits, tickets, reference_hits, reference_tickets) == pytest.approx(expected)
