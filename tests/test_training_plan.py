"""The training plan: full or incremental, and the rows an incremental run trains on (pure functions)."""

import pandas as pd
import pytest

from retrainer.core.training_plan import (
    ChampionLineage,
    incremental_config,
    incremental_rows,
    incremental_splits,
    plan_training,
)
from retrainer.settings import IncrementalPolicy, TrainingConfig

BASE = ("packaged:all-MiniLM-L6-v2", "main")
POLICY = IncrementalPolicy()


def _champion(generation: int = 0, base_model: tuple[str, str] = BASE) -> ChampionLineage:
    return ChampionLineage("m-1", *base_model, generation=generation)


@pytest.mark.parametrize(
    ("policy", "champion", "new", "curated", "full_requested", "mode", "reason"),
    [
        (POLICY, _champion(), 100, 1000, False, "incremental", "100 new of 1000"),
        (POLICY, _champion(), 100, 1000, True, "full", "requested"),
        (IncrementalPolicy(enabled=False), _champion(), 100, 1000, False, "full", "is off"),
        (POLICY, None, 1000, 1000, False, "full", "no champion"),
        (
            POLICY,
            _champion(base_model=("distilbert-base-uncased", "main")),
            100,
            1000,
            False,
            "full",
            "distilbert",
        ),
        (POLICY, _champion(base_model=(BASE[0], "v2")), 100, 1000, False, "full", "@v2"),
        (POLICY, _champion(generation=6), 100, 1000, False, "incremental", "100 new"),
        (POLICY, _champion(generation=7), 100, 1000, False, "full", "7 warm start(s)"),
        (IncrementalPolicy(full_every=0), _champion(), 100, 1000, False, "full", "0 warm start(s)"),
        (POLICY, _champion(), 0, 1000, False, "full", "no tickets the champion has not seen"),
        (POLICY, _champion(), 500, 1000, False, "incremental", "500 new"),
        (POLICY, _champion(), 501, 1000, False, "full", "50% of the training tickets are new"),
    ],
)
def test_plan_table(policy, champion, new, curated, full_requested, mode, reason):
    plan = plan_training(policy, champion, BASE, new, curated, full_requested)

    assert plan.mode == mode
    assert reason in plan.reason
    if mode == "incremental":
        assert (plan.warm_start_from, plan.generation) == ("m-1", champion.generation + 1)
    else:
        assert (plan.warm_start_from, plan.generation) == (None, 0)


def _rows(count: int, source: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket_id": [f"{source}-{n}" for n in range(count)],
            "source_key": f"incoming/{source}.csv",
            "source_etag": f"etag-{source}",
        }
    )


def test_an_incremental_run_trains_on_every_new_row_and_a_replayed_sample_of_the_others():
    old, new = _rows(1000, "old"), _rows(50, "new")
    rows = pd.concat([old, new], ignore_index=True)
    is_new = rows["source_key"] == "incoming/new.csv"

    chosen = incremental_rows(rows, is_new, replay_per_new=2.0, minimum=0, seed=1)

    assert set(new["ticket_id"]) <= set(chosen["ticket_id"])
    assert len(chosen) == 150 and chosen["ticket_id"].is_unique
    assert incremental_rows(rows, is_new, 2.0, 0, seed=1).equals(chosen)  # one seed, one sample
    assert not incremental_rows(rows, is_new, 2.0, 0, seed=2).equals(chosen)


def test_the_minimum_tops_up_small_nights_and_is_capped_by_the_rows_there_are():
    rows = pd.concat([_rows(200, "old"), _rows(10, "new")], ignore_index=True)
    is_new = rows["source_key"] == "incoming/new.csv"

    assert len(incremental_rows(rows, is_new, 2.0, minimum=100, seed=0)) == 100
    assert len(incremental_rows(rows, is_new, 2.0, minimum=1000, seed=0)) == 210  # every row there is


def test_new_rows_are_those_from_sources_the_champion_was_not_trained_on():
    train = pd.concat([_rows(400, "old"), _rows(40, "new")], ignore_index=True)
    validation = pd.concat([_rows(300, "old"), _rows(5, "new")], ignore_index=True)
    updated = _rows(3, "old").assign(source_etag="etag-old-v2")  # the same file sent again, changed
    train = pd.concat([train, updated], ignore_index=True)
    policy = IncrementalPolicy(replay_per_new=1.0, min_rows=50)

    chosen_train, chosen_validation, lexical = incremental_splits(
        (train, validation), {("incoming/old.csv", "etag-old")}, policy, seed=0
    )

    assert (chosen_train["source_etag"] != "etag-old").sum() == 43  # 40 new and 3 changed rows, all kept
    assert len(chosen_train) == 86  # and as many replayed
    assert (chosen_validation["source_key"] == "incoming/new.csv").sum() == 5
    assert len(chosen_validation) == 50  # topped up to the minimum
    assert len(lexical) == 748  # every row of both splits: under lexical_max_rows
    capped = incremental_splits(
        (train, validation), {("incoming/old.csv", "etag-old")}, IncrementalPolicy(lexical_max_rows=100), 0
    )[2]
    assert len(capped) == 100 and (capped["source_etag"] != "etag-old").sum() == 48  # every new row


def test_an_incremental_run_trains_fewer_epochs_at_a_scaled_learning_rate():
    config = incremental_config(TrainingConfig(learning_rate=1e-4, num_train_epochs=8), POLICY)

    assert config.num_train_epochs == POLICY.epochs
    assert config.learning_rate == pytest.approx(1e-4 * POLICY.learning_rate_scale)
