"""Base models other than BERT (the `large` preset's MPNet), a tiny random one standing in for it: the
training and scoring code, the preset's settings, the CPU warning, and the gate between base models."""

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import retrain
from retrainer.core.base_models import model_config
from retrainer.core.scoring import predict_probabilities
from retrainer.core.text import InputRecipe, encode
from retrainer.core.training import TrainingSpec, fine_tune
from retrainer.resources import Resources
from retrainer.settings import MPNET_BASE, TRAINING_PRESETS, GatePolicy, RetrainerSettings, TrainingConfig
from tasks.registry import read_production_pointer
from tasks.train import warn_when_a_gpu_model_trains_on_cpu
from tests.tiny_model import save_tiny_mpnet

QUICK = TrainingConfig(num_train_epochs=1, learning_rate=5e-3, max_length=48, lexical_weight=0.0)


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory):
    return save_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.fixture(scope="module")
def tickets():
    rows = generate_tickets(60, seed=3)
    return rows[:45], rows[45:]


def _head(model_dir) -> dict[str, torch.Tensor]:
    weights = load_file(model_dir / "model.safetensors")
    return {name: tensor for name, tensor in weights.items() if name.startswith("classifier.")}


def test_an_mpnet_trains_scores_and_reads_text_the_way_it_was_trained(tiny_mpnet_dir, tickets, tmp_path):
    config = QUICK.model_copy(update={"attention_dropout": 0.0, "lexical_weight": 0.5})
    model_dir = fine_tune(*tickets, TrainingSpec(str(tiny_mpnet_dir), "main", config), tmp_path)

    record = json.loads((model_dir / "training.json").read_text())
    assert (record["base_model"], record["base_model_revision"]) == (str(tiny_mpnet_dir), "main")
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model_type"] == "mpnet" and saved["attention_probs_dropout_prob"] == 0.0
    # MPNet's own special tokens frame the text (no [CLS]/[SEP], no token types), cut to the budget.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = encode(["Crash on save. " * 200], tokenizer, InputRecipe.of_model(model_dir, 0))
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert (tokens[0], tokens[-1], len(tokens)) == ("<s>", "</s>", 48)
    assert "token_type_ids" not in encoded
    probabilities = predict_probabilities(model_dir, ["The app crashes on save", "Please add dark mode"], 0)
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    assert record["lexical"]["blend_weight"] == 0.5  # the lexical half blends into an MPNet's scores too


def test_an_mpnets_new_head_is_drawn_from_the_seed(tiny_mpnet_dir, tickets, tmp_path):
    """MPNet's head (dense + out_proj, no pooler) is new: one seed must give one head, as for BERT."""
    frozen = QUICK.model_copy(update={"learning_rate": 0.0})
    trained = _head(fine_tune(*tickets, TrainingSpec(str(tiny_mpnet_dir), "main", frozen), tmp_path))

    def drawn(seed: int) -> dict[str, torch.Tensor]:
        set_seed(seed)
        config = model_config(str(tiny_mpnet_dir), "main", frozen)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_mpnet_dir, config=config)
        return {f"classifier.{name}": tensor for name, tensor in model.classifier.state_dict().items()}

    assert set(trained) == {
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    }
    assert all(torch.equal(trained[name], tensor) for name, tensor in drawn(frozen.seed).items())
    assert not torch.equal(
        trained["classifier.dense.weight"], drawn(frozen.seed + 1)["classifier.dense.weight"]
    )


def test_a_token_budget_beyond_the_base_model_is_refused_before_training(tiny_mpnet_dir, tickets, tmp_path):
    too_long = QUICK.model_copy(update={"max_length": 600})
    with pytest.raises(
        ValueError, match=r"max_length=600 is more than .* \(mpnet\) reads: at most 512 tokens"
    ):
        fine_tune(*tickets, TrainingSpec(str(tiny_mpnet_dir), "main", too_long), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_the_large_preset_brings_its_base_model_at_a_pinned_commit(monkeypatch):
    large = RetrainerSettings(training_preset="large")
    assert (large.base_model, large.base_model_revision) == (MPNET_BASE.hub_id, MPNET_BASE.revision)
    assert re.fullmatch(r"[0-9a-f]{40}", large.base_model_revision)  # a commit, not a moving branch
    assert large.training == TRAINING_PRESETS["large"] and large.training.max_length == 256
    # A base model set in the environment (a local copy, a mirror) replaces the preset's, at its revision.
    monkeypatch.setenv("RETRAINER_BASE_MODEL", "/models/all-mpnet-base-v2")
    local = RetrainerSettings(training_preset="large")
    assert (local.base_model, local.base_model_revision) == ("/models/all-mpnet-base-v2", "main")
    # A run that overrides the base model (the Prefect UI) does not read it at the preset's commit.
    other = large.with_overrides(base_model="distilbert-base-uncased")
    assert other.base_model_revision == "main"
    assert large.with_overrides(base_model=large.base_model).base_model_revision == MPNET_BASE.revision
    assert RetrainerSettings().gpu_base_model() is None and local.gpu_base_model() == MPNET_BASE
    # A fine-tune deployment gets the base model as a parameter, not the preset: it is recognised too.
    worker = RetrainerSettings().with_overrides(base_model=MPNET_BASE.hub_id)
    assert worker.gpu_base_model() == MPNET_BASE


def test_a_gpu_preset_on_a_cpu_warns_with_the_expected_time(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    large = RetrainerSettings(training_preset="large")

    warning = warn_when_a_gpu_model_trains_on_cpu(large, 1200, 5.0)

    hours = MPNET_BASE.cpu_seconds_per_ticket_epoch * 1200 * 5 / 3600
    assert f"training 1200 tickets for 5 epochs on this CPU takes about {hours:.1f} h" in warning
    assert warning in caplog.text
    assert warn_when_a_gpu_model_trains_on_cpu(RetrainerSettings(), 1200, 5.0) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert warn_when_a_gpu_model_trains_on_cpu(large, 1200, 5.0) is None


def test_a_champion_of_one_base_model_is_gated_against_a_challenger_of_another(
    run_resources, tiny_mpnet_dir, caplog
):
    """BERT champion (128 tokens), MPNet challenger (48 tokens, the `large` preset): each is scored on
    the same tickets with its own input recipe, the gate decides, and the card names the base model."""
    store = run_resources.store
    store.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(300, seed=1, id_prefix="b1")))
    weak = TrainingConfig(learning_rate=0.0, num_train_epochs=1, lexical_weight=0.0)
    champion = retrain(resources=run_resources, training=weak)
    store.put("incoming/batch-2.csv", tickets_to_csv(generate_tickets(150, seed=2, id_prefix="b2")))
    large = Resources(run_resources.settings.model_copy(update={"training_preset": "large"}), store)

    outcome = retrain(
        resources=large,
        training=QUICK.model_copy(update={"num_train_epochs": 2, "lexical_weight": 0.6}),
        base_model=str(tiny_mpnet_dir),
        gate=GatePolicy(max_recall_drop=1.0),
    )

    assert outcome.training_plan.mode == "full" and "was fine-tuned from" in outcome.training_plan.reason
    assert outcome.challenger.examples == outcome.champion.examples > 0
    assert outcome.status == "promoted" and outcome.challenger_accuracy > outcome.champion_accuracy
    assert read_production_pointer(store)[0].version == outcome.challenger_version
    assert "is meant for a GPU and no CUDA device is visible" in caplog.text  # the preset's CPU warning
    recipes = {
        version: InputRecipe.model_validate_json(store.get(f"models/{version}/input_recipe.json")[0])
        for version in (champion.challenger_version, outcome.challenger_version)
    }
    assert (
        recipes[champion.challenger_version].max_length == 128
        and recipes[outcome.challenger_version].max_length == 48
    )
    published = json.loads(store.get(f"models/{outcome.challenger_version}/metrics.json")[0])
    assert (published["base_model"], published["base_model_revision"]) == (str(tiny_mpnet_dir), "main")
    trained = json.loads(store.get(f"models/{outcome.challenger_version}/training.json")[0])
    assert trained["base_model"] == str(tiny_mpnet_dir)
    card = store.get(f"models/{outcome.challenger_version}/README.md")[0].decode()
    assert f"Fine-tuned from `{tiny_mpnet_dir}` (revision `main`)" in card
    assert yaml.safe_load(card.split("---\n")[1])["ticket_retrainer"]["base_model"] == str(tiny_mpnet_dir)
    before = json.loads(store.get(f"models/{champion.challenger_version}/metrics.json")[0])
    assert before["base_model"] == run_resources.settings.base_model  # the champion's record is untouched
