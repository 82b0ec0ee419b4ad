"""Known predictions: a champion is scored only on eval tickets new to it, and its evaluation, hence the
gate's decision, is the one fresh scores give; the stored parts hold no text and an erasure empties them."""

import io

import pandas as pd
import pytest

from app.samples import generate_tickets
from retrainer.core.gate import decide_promotion
from retrainer.core.known_predictions import KnownPredictions, text_digest
from retrainer.settings import GatePolicy
from retrainer.storage import ObjectStore, PreconditionFailedError
from tasks.evaluate import score_on_eval
from tasks.known_predictions import (
    erase_from_predictions,
    predictions_prefix,
    prune_predictions,
    read_known_predictions,
    record_predictions,
)
from tests.registry_helpers import labelled_copy


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random BERT, labelled as a trained model is."""
    return labelled_copy(tiny_model_dir, tmp_path_factory.mktemp("known") / "model")


def _eval_rows(count: int, seed: int) -> pd.DataFrame:
    return generate_tickets(count, seed=seed, id_prefix=f"E{seed}")[["ticket_id", "text", "label"]]


def _score(model_dir, rows: pd.DataFrame, known: KnownPredictions | None = None):
    return score_on_eval(model_dir, rows, 64, [False] * len(rows), [False] * len(rows), known)


def test_known_predictions_are_reused_and_the_evaluation_and_decision_are_those_of_fresh_scores(
    model_dir,
):
    first_night = _eval_rows(40, seed=1)
    night_one = _score(model_dir, first_night)
    assert (night_one.scored, night_one.reused) == (40, 0)

    resent = first_night.iloc[:5].assign(text=lambda rows: rows["text"] + " (edited)")  # other text: again
    copy_of_one = _eval_rows(20, seed=2).assign(text=first_night["text"].iloc[10])  # known text, new ids
    tonight = pd.concat(
        [resent, first_night.iloc[5:], copy_of_one, _eval_rows(15, seed=3)], ignore_index=True
    )
    known = KnownPredictions.from_frames([night_one.new_predictions])
    reusing = _score(model_dir, tonight, known)
    fresh = _score(model_dir, tonight)

    assert (reusing.scored, reusing.reused) == (5 + 15, 35 + 20)  # the edited, the new; each text once
    assert set(reusing.new_predictions["ticket_id"]) == {
        *resent["ticket_id"],
        *_eval_rows(15, 3)["ticket_id"],
    }
    assert reusing.evaluation == fresh.evaluation
    challenger = _score(model_dir, tonight).evaluation
    policy = GatePolicy()
    assert decide_promotion(challenger, reusing.evaluation, policy) == decide_promotion(
        challenger, fresh.evaluation, policy
    )


def test_stored_predictions_round_trip_hold_no_text_and_an_erasure_empties_them(
    any_store: ObjectStore, model_dir
):
    rows = _eval_rows(12, seed=4)
    scored = _score(model_dir, rows)
    key = record_predictions(any_store, "m-1", "run-1", scored.new_predictions)

    assert key == f"{predictions_prefix(any_store, 'm-1')}run-1.parquet"
    known = read_known_predictions(any_store, "m-1")
    assert set(known.rows) == {text_digest(text) for text in rows["text"]}
    stored = any_store.get(key)[0]
    assert not any(text.encode() in stored for text in rows["text"])
    with pytest.raises(PreconditionFailedError):  # a run's part is written once
        record_predictions(any_store, "m-1", "run-1", scored.new_predictions)
    assert record_predictions(any_store, "m-1", "run-2", scored.new_predictions.iloc[:0]) is None

    erased = rows["ticket_id"].iloc[:3].tolist()
    assert erase_from_predictions(any_store, [*erased, "never-seen"]) == [key]
    left = pd.read_parquet(io.BytesIO(any_store.get(key)[0]))
    assert sorted(left["ticket_id"]) == sorted(rows["ticket_id"].iloc[3:])
    assert erase_from_predictions(any_store, erased) == []  # idempotent

    # A publication keeps only the new production version's and its rollback target's predictions.
    for version in ("m-2", "m-3"):
        record_predictions(any_store, version, "run-3", scored.new_predictions)
    deleted = prune_predictions(any_store, ["m-3", "m-2", None])
    assert deleted == [key] and read_known_predictions(any_store, "m-1").rows == {}
    assert len(read_known_predictions(any_store, "m-3").rows) == len(rows)


def test_a_fine_tune_asked_for_eval_predictions_stores_those_the_gate_would_compute(run_resources, tmp_path):
    """What a fine-tune on the gpu pool sends back: its challenger's predictions on the eval split, the
    same the retrain run would compute on its cpu worker (so it computes none)."""
    from flows.fine_tune import fine_tune_flow
    from flows.retrain import ingest_new_batches
    from retrainer.core.training_plan import TrainingRecipe
    from tasks.dataset import EVAL, check_splits
    from tasks.known_predictions import read_predictions_at
    from tests.retrain_process import QUICK
    from tests.tickets import drop_batch

    store = run_resources.store
    drop_batch(store, "batch-1.csv", 150, seed=1)
    ingestion = ingest_new_batches(run_resources, "run-1")
    settings = run_resources.settings.model_copy(update={"training": QUICK})
    key = "runs/run-1/challenger-eval-predictions.parquet"

    fine_tune_flow(
        ingestion.dataset_version,
        "runs/run-1/challenger/",
        TrainingRecipe.for_run(settings),
        resources=run_resources,
        eval_predictions_key=key,
    )

    eval_rows = check_splits(ingestion.curated)[EVAL]
    store.download_prefix("runs/run-1/challenger/", tmp_path / "challenger")
    sent_back = read_predictions_at(store, key)
    assert len(sent_back) == len(eval_rows) >= 1
    reusing = _score(tmp_path / "challenger", eval_rows, sent_back)
    assert (reusing.scored, reusing.reused) == (0, len(eval_rows))
    assert reusing.evaluation == _score(tmp_path / "challenger", eval_rows).evaluation
