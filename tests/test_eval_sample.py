"""The bounded eval set: every new eval ticket, the rest stratified by label, the same draw for the same
ids (night after night, but for new tickets), nothing sampled within the bound."""

import pandas as pd

from retrainer.core.eval_sample import bounded_eval
from retrainer.core.labels import LABELS


def _eval_rows(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, count in counts.items() for _ in range(count)]
    return pd.DataFrame({"ticket_id": [f"T-{n}" for n in range(len(labels))], "label": labels})


def test_within_the_bound_every_eval_ticket_is_scored():
    rows = _eval_rows({"bug": 10, "feature_request": 5, "general_inquiry": 5})
    sample, _, sampling = bounded_eval(rows, [False] * 20, 20)
    assert sample is rows and not sampling.sampled and (sampling.eval_tickets, sampling.scored) == (20, 20)


def test_over_the_bound_every_new_ticket_stays_and_the_rest_keeps_the_label_shares():
    rows = _eval_rows({"bug": 6000, "feature_request": 3000, "general_inquiry": 1000})
    new_rows = [index % 100 == 0 for index in range(len(rows))]  # 100 new, spread over the labels
    sample, new, sampling = bounded_eval(rows, new_rows, 1100)

    assert (sampling.eval_tickets, sampling.scored, sampling.new, sampling.sampled) == (
        10000,
        1100,
        100,
        True,
    )
    assert set(rows["ticket_id"][new_rows]) <= set(sample["ticket_id"]) and sum(new) == 100
    others = sample[[not flag for flag in new]]
    assert others["label"].value_counts().to_dict() == {
        "bug": 600,
        "feature_request": 300,
        "general_inquiry": 100,
    }
    assert list(sample.index) == sorted(sample.index)  # eval order kept
    again, _, _ = bounded_eval(rows, new_rows, 1100)
    salted, _, _ = bounded_eval(rows, new_rows, 1100, salt="another draw")
    assert list(again["ticket_id"]) == list(sample["ticket_id"])  # the same ids draw the same sample
    assert list(salted["ticket_id"]) != list(sample["ticket_id"])


def test_the_sample_stays_the_same_night_after_night_but_for_the_new_tickets():
    """A champion's stored predictions from the night it was the challenger cover the next sample."""
    tonight = _eval_rows({"bug": 6000, "feature_request": 3000, "general_inquiry": 1000})
    tomorrow = pd.concat([tonight, _eval_rows({"bug": 60, "feature_request": 30, "general_inquiry": 10})])
    tomorrow["ticket_id"] = [f"T-{n}" for n in range(len(tomorrow))]  # 100 more eval tickets, all new
    first, _, _ = bounded_eval(tonight, [False] * len(tonight), 1000)
    second, _, _ = bounded_eval(tomorrow, [False] * len(tonight) + [True] * 100, 1000)

    scored_before = set(first["ticket_id"])
    unscored = [ticket for ticket in second["ticket_id"] if ticket not in scored_before]
    assert len(unscored) == 100 and set(unscored) == {f"T-{n}" for n in range(10000, 10100)}


def test_more_new_tickets_than_the_bound_are_all_scored():
    rows = _eval_rows({label: 50 for label in LABELS})
    sample, new, sampling = bounded_eval(rows, [True] * 120 + [False] * 30, 100)
    assert len(sample) == 120 and all(new) and sampling.scored == 120
