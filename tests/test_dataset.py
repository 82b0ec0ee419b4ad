"""Curation: deterministic splits that never move a ticket between eval and training."""

import pandas as pd
import pytest

from retrainer.samples import generate_tickets
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    assign_split,
    check_splits,
    merge_curated,
    read_curated,
    write_curated,
)


def _rows(ids, label="bug", text="crash"):
    return pd.DataFrame({"ticket_id": ids, "text": [text] * len(ids), "label": [label] * len(ids)})


def test_split_is_a_pure_function_of_ticket_id_with_the_expected_shares():
    ids = [f"T-{index}" for index in range(20_000)]
    splits = [assign_split(ticket_id, 0.2, 0.1) for ticket_id in ids]

    assert splits == [assign_split(ticket_id, 0.2, 0.1) for ticket_id in ids]
    assert splits.count(EVAL) / len(ids) == pytest.approx(0.2, abs=0.01)
    assert splits.count(VALIDATION) / len(ids) == pytest.approx(0.1, abs=0.01)


def test_existing_rows_keep_their_split_when_fractions_change():
    first = merge_curated(None, _rows([f"T-{index}" for index in range(500)]), 0.2, 0.1)
    second = merge_curated(first, _rows(["NEW-1"]), 0.45, 0.45)

    kept = second.set_index("ticket_id").loc[first["ticket_id"], "split"]
    assert list(kept) == list(first["split"])


def test_resent_ticket_replaces_its_row_but_not_its_split():
    first = merge_curated(None, _rows(["T-1", "T-2"], label="bug"), 0.2, 0.1)
    second = merge_curated(first, _rows(["T-1"], label="feature_request"), 0.2, 0.1)

    assert len(second) == 2
    row = second.set_index("ticket_id").loc["T-1"]
    assert row["label"] == "feature_request"
    assert row["split"] == first.set_index("ticket_id").loc["T-1", "split"]


def test_eval_tickets_never_appear_in_training():
    curated = merge_curated(None, generate_tickets(600, seed=3), 0.2, 0.1)
    splits = check_splits(curated)

    assert set(splits[EVAL]["ticket_id"]).isdisjoint(splits[TRAIN]["ticket_id"])
    assert set(splits[EVAL]["ticket_id"]).isdisjoint(splits[VALIDATION]["ticket_id"])
    assert sum(len(rows) for rows in splits.values()) == 600


def test_too_little_data_is_a_clear_error():
    curated = merge_curated(None, _rows(["only-one"]), 0.2, 0.1)

    with pytest.raises(ValueError, match="empty split"):
        check_splits(curated)


def test_curated_versions_round_trip_through_s3_and_are_immutable(store):
    curated = merge_curated(None, generate_tickets(30, seed=1), 0.2, 0.1)
    version = write_curated(store, curated)

    pd.testing.assert_frame_equal(read_curated(store, version), curated)
    assert read_curated(store, None) is None
