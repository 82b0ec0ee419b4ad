"""The promotion rule: a pure function, tested as a table."""

import pytest

from tasks.gate import decide_promotion


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (0.80, None, True),  # first run: no champion, the challenger bootstraps production
        (0.00, None, True),
        (0.81, 0.80, True),  # strictly better
        (0.80, 0.80, False),  # a tie keeps the champion
        (0.79, 0.80, False),  # worse
        (1.00, 0.9999, True),
        (0.0, 0.0, False),
    ],
)
def test_promote_only_when_strictly_more_accurate(challenger, champion, promote):
    decision = decide_promotion(challenger, champion)

    assert decision.promote is promote
    assert decision.reasons, "every decision carries its reasons"
    assert f"{challenger:.4f}" in decision.reasons[0]


def test_reasons_name_both_accuracies():
    decision = decide_promotion(0.7, 0.75)

    assert "0.7000" in decision.reasons[0] and "0.7500" in decision.reasons[0]
    assert "champion kept" in decision.reasons[0]
