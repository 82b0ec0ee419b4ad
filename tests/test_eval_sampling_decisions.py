"""The bounded eval set decides as the full eval split does where the difference between the models is
clear: a small run of `benchmarks/eval_sampling.py`, through the product's own `bounded_eval`,
`evaluate_predictions` and `decide_promotion` (default `GatePolicy`)."""

import numpy as np
import pytest

from benchmarks.eval_sampling import (
    checks,
    draw_challenger,
    eval_view,
    gate,
    loses_recall,
    make_night,
    uniform,
)
from retrainer.settings import GatePolicy

EVAL_TICKETS, NEW, BOUND, CHURN = 20_000, 1_000, 5_000, 0.03
VERSIONS = ("ds-20261206T020000Z-0a1b2c3d4e", "ds-20261207T020000Z-5f6a7b8c9d")


@pytest.fixture(scope="module")
def night():
    return make_night(EVAL_TICKETS, NEW, seed=3)


@pytest.fixture(scope="module")
def views(night):
    """The full split (within its own bound) and a sample of `BOUND` per dataset version."""
    return eval_view(night, EVAL_TICKETS, "ds-full"), [eval_view(night, BOUND, v) for v in VERSIONS]


def _blocked_by(gated) -> set[str]:
    return {name for name, (blocks, _) in checks(gated.decision).items() if blocks}


@pytest.mark.parametrize(
    ("scenario", "promote", "blocked_by"),
    [
        (uniform(2), True, set()),  # clearly better
        (uniform(-1.5), False, {"margin"}),  # clearly worse
        (loses_recall("general_inquiry", 12, gain=2), False, {"recall general_inquiry"}),  # better, but
    ],
    ids=["better", "worse", "recall-loss"],
)
def test_sampled_and_full_decisions_agree_where_the_difference_is_clear(
    night, views, scenario, promote, blocked_by
):
    full_view, sampled_views = views
    policy = GatePolicy()
    for draw in range(2):
        challenger = draw_challenger(night, scenario, CHURN, np.random.default_rng([7, draw]))
        full = gate(full_view, challenger, policy)
        assert full.decision.promote is promote and _blocked_by(full) == blocked_by, full.decision.reasons
        for view in sampled_views:
            sampled = gate(view, challenger, policy)
            assert sampled.decision.promote is promote, sampled.decision.reasons
            assert _blocked_by(sampled) == blocked_by, sampled.decision.reasons


def test_the_sample_holds_every_new_eval_ticket_and_both_models_are_scored_on_it(night, views):
    full_view, sampled_views = views
    new_ids = set(night.rows["ticket_id"][night.new_rows])
    challenger = draw_challenger(night, uniform(1), CHURN, np.random.default_rng(1))
    assert not full_view.sampling.sampled and len(full_view.rows) == EVAL_TICKETS and len(new_ids) == NEW
    for view in sampled_views:
        held = view.rows["ticket_id"]
        assert view.sampling.sampled and (view.sampling.scored, len(view.rows)) == (BOUND, BOUND)
        assert new_ids <= set(held) and sum(view.new_rows) == NEW
        gated = gate(view, challenger, GatePolicy())
        # Both models' per-ticket correctness is on the sample's tickets, in its order.
        labels = night.labels[view.positions]
        assert gated.challenger.correct == (challenger[view.positions] == labels).tolist()
        assert view.champion.correct == (night.champion[view.positions] == labels).tolist()
        assert gated.challenger.overall.support == view.champion.overall.support
    rerun = eval_view(night, BOUND, VERSIONS[0])  # a rerun: the same sample
    assert list(rerun.rows["ticket_id"]) == list(sampled_views[0].rows["ticket_id"])
    first, second = (set(view.rows["ticket_id"]) for view in sampled_views)
    assert first != second  # another salt, another draw of the established tickets
