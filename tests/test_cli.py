"""The `retrainer` command as a user runs it (a subprocess, against SeaweedFS)."""

import pandas as pd
import pytest

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import retrain
from retrainer.core.labels import LABELS
from retrainer.settings import GatePolicy, TrainingConfig
from retrainer.storage import S3Store
from tasks.registry import read_history, read_production_pointer
from tests.demo_run import DemoRun, run_retrainer


@pytest.fixture
def two_versions(retrain_env):
    """A registry with two published versions, the second in production."""
    store = S3Store(retrain_env)
    store.ensure_bucket()
    store.put("incoming/b1.csv", tickets_to_csv(generate_tickets(300, seed=1, id_prefix="b1")))
    first = retrain(training=TrainingConfig(learning_rate=0.0, num_train_epochs=1, lexical_weight=0.0))
    store.put("incoming/b2.csv", tickets_to_csv(generate_tickets(150, seed=2, id_prefix="b2")))
    # Two epochs beat the random champion (the challenger's lexical half alone would): four took ~20 s more.
    second = retrain(
        training=TrainingConfig(learning_rate=5e-3, num_train_epochs=2), gate=GatePolicy(max_recall_drop=1)
    )
    assert second.status == "promoted"
    return store, first.challenger_version, second.challenger_version


def test_models_list_rollback_predict_and_score(two_versions, tmp_path):
    store, first, second = two_versions

    listed = run_retrainer("models", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"* {second}" in listed.stdout and f"  {first}" in listed.stdout

    predicted = run_retrainer("predict", "The app crashes on save", "Please add dark mode", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert f"model {second}" in predicted.stdout
    assert all(line.split()[0] in LABELS for line in predicted.stdout.splitlines()[1:])

    (tmp_path / "tickets.csv").write_bytes(tickets_to_csv(generate_tickets(20, seed=9)))
    scored = run_retrainer("score", "tickets.csv", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    result = pd.read_csv(tmp_path / "tickets.scored.csv")
    assert len(result) == 20 and set(result["predicted_label"]) <= set(LABELS)
    assert result["confidence"].between(0, 1).all() and set(result["model_version"]) == {second}

    rolled = run_retrainer("rollback", "--reason", "canary complaints", cwd=tmp_path)
    assert rolled.returncode == 0, rolled.stderr
    assert read_production_pointer(store)[0].version == first
    assert read_history(store)[-1].reasons == [f"rolled back from {second} to {first}: canary complaints"]


def test_score_names_a_missing_text_column_before_it_needs_a_model_or_a_store(tmp_path):
    (tmp_path / "bad.csv").write_text("id,body\n1,crash\n")

    result = run_retrainer("score", "bad.csv", cwd=tmp_path)

    assert result.returncode == 2
    assert "bad.csv: no column 'text' (found: id, body)" in result.stderr


def test_generate_tickets_writes_a_valid_batch(tmp_path):
    result = run_retrainer("generate-tickets", "batch.csv", "--count", "30", "--seed", "4", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    tickets = pd.read_csv(tmp_path / "batch.csv")
    assert len(tickets) == 30 and set(tickets["label"]) == set(LABELS)


@pytest.mark.s3  # `retrainer demo` starts SeaweedFS, a Prefect server and trains, all of its own
@pytest.mark.prefect
@pytest.mark.training
def test_demo_runs_both_cycles_on_the_packaged_model(demo_run: DemoRun):
    result = demo_run.result

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cycle 1: PROMOTED" in result.stdout
    assert "cycle 2: " in result.stdout and "both scored on the same" in result.stdout
    assert "2 quarantined" in result.stdout
    assert (demo_run.workdir / "reports" / "cycle-2.md").is_file()
    production = demo_run.production_models()
    assert len(production) == 1 and (production[0] / "model.safetensors").is_file()
    # It ends by classifying three tickets over HTTP from `retrainer serve` on its store.
    served = result.stdout.split("/v1/classify with 3 tickets:\n")[1].splitlines()[:3]
    assert [line.split()[0] for line in served] == ["D-1", "D-2", "D-3"], served
    assert all(line.split()[1] in LABELS and line.endswith(f"({production[0].name})") for line in served)
