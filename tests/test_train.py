"""Fine-tuning: checkpoints in S3 let a killed run resume; the run records how it was made."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from app.samples import generate_tickets
from retrainer.core import base_models, checkpoints
from retrainer.core.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature, soften
from retrainer.core.labels import LABEL_TO_ID
from retrainer.core.lexical import LexicalModel
from retrainer.core.scoring import predict_probabilities
from retrainer.core.text import RECIPE_FILE, InputRecipe
from retrainer.core.training import RunOptions, TrainingSpec, fine_tune
from retrainer.settings import S3Settings, TrainingConfig
from retrainer.storage import BucketNotFoundError, open_store
from tasks.checkpoints import CheckpointSync
from tasks.dataset import EVAL, TRAIN, VALIDATION, check_splits
from tests.tickets import merge_curated


class MachineLostError(RuntimeError):
    """Stands in for a killed worker: raised right after the first checkpoint reached S3."""


class _DieAfterFirstCheckpoint(TrainerCallback):
    def __init__(self, sync: CheckpointSync) -> None:
        self.sync = sync

    def on_save(self, args, state, control, **kwargs):
        self.sync.wait_for_uploads()  # uploads run in the background: die once this one is in S3
        raise MachineLostError(f"killed after saving step {state.global_step}")


def _spec(tiny_model_dir: Path, config: TrainingConfig) -> TrainingSpec:
    return TrainingSpec(str(tiny_model_dir), "main", config)


def _splits(count: int) -> dict:
    tickets = generate_tickets(count, seed=1).assign(
        source_key="incoming/a.csv", source_etag="e", source_row=1
    )
    return check_splits(merge_curated(None, tickets, 0.2, 0.1))


@pytest.fixture
def splits():
    return _splits(300)


@pytest.fixture
def few_splits():
    """90 tickets (4 steps an epoch, not 14): for the tests whose assertions hold whatever the model
    learns: what a run writes, resumes, caches or records, not how well it scores."""
    return _splits(90)


def _kill_after_first_checkpoint_then_rerun(
    store, tiny_model_dir, splits, tmp_path, config
) -> tuple[dict, Path]:
    """Train on a 'first machine' that dies right after its first checkpoint reached S3, then run the
    same job on a second machine; the first machine's ``latest.json`` and the second's model folder."""
    sync = CheckpointSync(store, "runs/checkpoints/ds-test/abc/")
    arguments = (splits[TRAIN], splits[VALIDATION], _spec(tiny_model_dir, config))
    dies = RunOptions(checkpoints=sync, callbacks=(_DieAfterFirstCheckpoint(sync),))
    with pytest.raises(MachineLostError):
        fine_tune(*arguments, tmp_path / "first-machine", options=dies)
    saved = json.loads(store.get("runs/checkpoints/ds-test/abc/latest.json")[0])
    return saved, fine_tune(*arguments, tmp_path / "second-machine", options=RunOptions(checkpoints=sync))


def test_a_killed_run_resumes_from_its_last_checkpoint_in_s3_finishes_and_averages_all_epochs(
    store, tiny_model_dir, splits, tmp_path
):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=3, average_share=1.0)

    saved, model_dir = _kill_after_first_checkpoint_then_rerun(
        store, tiny_model_dir, splits, tmp_path, config
    )

    record = json.loads((model_dir / "training.json").read_text())
    assert saved["step"] > 0 and record["resumed_from_step"] == saved["step"]
    assert record["global_step"] == record["max_steps"] > saved["step"]  # it finished the remaining epochs
    assert record["seed"] == 42 and "transformers" in record["library_versions"]
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "training_args.bin").exists()
    # the epochs saved before the kill are averaged too
    assert record["averaged_steps"][0] == saved["step"] and len(record["averaged_steps"]) == 3
    # where the time went, phase by phase (benchmarks/profile_fine_tune.py prints it as a table)
    phases = record["seconds"]
    assert {
        "load_model",
        "restore_checkpoints",
        "tokenize",
        "train_steps",
        "evaluate",
        "checkpoint_save",
    } <= set(phases)
    assert {"train_end", "average", "save_model", "calibrate", "lexical_fit"} <= set(phases)
    assert phases["train_steps"] > 0 and phases["evaluate"] > 0 and phases["checkpoint_save"] > 0
    assert all(seconds >= 0 for seconds in phases.values())
    # what ran on this machine (a CPU here: the CPU recipe's batch and learning rate, unchanged)
    assert (record["train_batch_size"], record["learning_rate"]) == (16, 5e-3)
    assert record["device"].startswith("CPU")
    # every checkpoint reached S3 before training ended, and no staged copy was left behind
    names = {
        info.key.split("/")[4] for info in store.list_objects("runs/checkpoints/ds-test/abc/checkpoint-")
    }
    assert names == {
        f"checkpoint-{step}" for step in range(saved["step"], record["max_steps"] + 1, saved["step"])
    }
    assert not list((tmp_path / "second-machine" / "checkpoints").glob(".uploading/*"))


def test_a_checkpoint_that_cannot_be_uploaded_fails_the_training(tiny_model_dir, few_splits, tmp_path):
    gone = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="no-such-bucket"))
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1)
    failing = RunOptions(checkpoints=CheckpointSync(gone, "runs/checkpoints/x/"))

    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        fine_tune(
            few_splits[TRAIN],
            few_splits[VALIDATION],
            _spec(tiny_model_dir, config),
            tmp_path / "w",
            options=failing,
        )


def test_a_checkpoint_trained_with_another_batch_size_is_not_resumed(tmp_path, caplog):
    checkpoint = tmp_path / "checkpoint-40"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 40, "train_batch_size": 32}))

    assert (
        checkpoints.resumable_checkpoint(checkpoint, TrainingConfig(per_device_train_batch_size=32))
        == checkpoint
    )
    with caplog.at_level("WARNING", logger="retrainer.core.checkpoints"):
        assert (
            checkpoints.resumable_checkpoint(checkpoint, TrainingConfig(per_device_train_batch_size=16))
            is None
        )
    assert "trained 32 tickets a step, this device trains 16" in caplog.text
    assert checkpoints.resumable_checkpoint(None, TrainingConfig()) is None


def test_averaging_publishes_the_mean_weights_of_the_last_epochs(store, tiny_model_dir, splits, tmp_path):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=3, average_share=0.6)  # 2 of 3

    model_dir = fine_tune(splits[TRAIN], splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)

    record = json.loads((model_dir / "training.json").read_text())
    assert len(record["averaged_steps"]) == 2 and record["averaged_steps"][-1] == record["max_steps"]
    second_last, last = (
        load_file(tmp_path / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")
        for step in record["averaged_steps"]
    )
    published = load_file(model_dir / "model.safetensors")
    assert published.keys() == last.keys()
    for name, weights in published.items():
        expected = (second_last[name] + last[name]) / 2 if weights.is_floating_point() else last[name]
        assert torch.allclose(weights, expected, atol=1e-6), name
    assert not torch.equal(published["classifier.weight"], last["classifier.weight"])


class _FirstEpochScoresBest(TrainerCallback):
    """Makes the first epoch the best by validation accuracy (as a tie does: later epochs never beat it)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_accuracy"] = 1.0 if state.epoch <= 1 else 0.0


def test_averaging_takes_the_last_epochs_even_when_the_best_epoch_is_an_earlier_one(
    store, tiny_model_dir, splits, tmp_path
):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=3, average_share=0.6)  # 2 of 3

    model_dir = fine_tune(
        splits[TRAIN],
        splits[VALIDATION],
        _spec(tiny_model_dir, config),
        tmp_path,
        options=RunOptions(callbacks=(_FirstEpochScoresBest(),)),
    )

    record = json.loads((model_dir / "training.json").read_text())
    steps_per_epoch = record["max_steps"] // 3
    assert record["averaged_steps"] == [2 * steps_per_epoch, 3 * steps_per_epoch]


def test_a_run_without_checkpoints_starts_fresh_and_says_so(store, tiny_model_dir, few_splits, tmp_path):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1)

    model_dir = fine_tune(few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)

    record = json.loads((model_dir / "training.json").read_text())
    assert record["resumed_from_step"] is None and record["global_step"] == record["max_steps"]


def test_the_seed_makes_training_reproducible(store, tiny_model_dir, few_splits, tmp_path):
    def train(seed: int, folder: str) -> dict[str, torch.Tensor]:
        config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, seed=seed)
        model_dir = fine_tune(
            few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path / folder
        )
        return load_file(model_dir / "model.safetensors")

    first, again, other = train(7, "first"), train(7, "again"), train(8, "other")

    assert all(torch.equal(first[name], again[name]) for name in first)  # the new head included
    assert not torch.equal(first["classifier.weight"], other["classifier.weight"])


@pytest.mark.parametrize(("attention_dropout", "saved"), [(0.0, 0.0), (0.05, 0.05), (None, 0.1)])
def test_attention_dropout_is_the_runs_or_the_base_models_own(
    store, tiny_model_dir, few_splits, tmp_path, attention_dropout, saved
):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, attention_dropout=attention_dropout)

    model_dir = fine_tune(few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)

    trained = json.loads((model_dir / "config.json").read_text())
    assert trained["attention_probs_dropout_prob"] == saved  # None: BertConfig's 0.1 of the tiny base
    assert trained["hidden_dropout_prob"] == 0.1  # only attention dropout is the run's to change
    assert trained["id2label"] == {"0": "bug", "1": "feature_request", "2": "general_inquiry"}


def test_an_attention_dropout_the_architecture_lacks_is_reported_not_silently_ignored(
    tiny_model_dir, monkeypatch, caplog
):
    monkeypatch.setattr(base_models, "ATTENTION_DROPOUT_FIELDS", ("attn_dropout_of_another_architecture",))

    config = base_models.model_config(str(tiny_model_dir), "main", TrainingConfig(attention_dropout=0.0))

    assert config.attention_probs_dropout_prob == 0.1  # untouched
    assert "attention_dropout=0.0 ignored" in caplog.text and "(bert)" in caplog.text


def test_tokenized_splits_are_cached_per_dataset_version(store, tiny_model_dir, few_splits, tmp_path):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1)
    cache = tmp_path / "tokenized" / "ds-1"
    arguments = (few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config))

    fine_tune(*arguments, tmp_path / "first", options=RunOptions(tokenized_cache=cache))
    files = {path: path.stat().st_mtime_ns for path in cache.glob("*.arrow")}
    fine_tune(*arguments, tmp_path / "second", options=RunOptions(tokenized_cache=cache))

    assert {path.name.split("-")[0] for path in files} == {"train", "validation"}
    assert {path: path.stat().st_mtime_ns for path in cache.glob("*.arrow")} == files  # reused, not rewritten


def test_the_input_recipe_is_saved_with_the_model_and_scoring_follows_it(
    store, tiny_model_dir, few_splits, tmp_path
):
    config = TrainingConfig(
        learning_rate=5e-3, num_train_epochs=1, max_length=8, truncation="tail", clean_text=True
    )

    model_dir = fine_tune(few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)

    assert InputRecipe.of_model(model_dir, default_max_length=512) == config.input_recipe()


def test_scoring_encodes_text_with_the_models_own_recipe(store, tiny_model_dir, few_splits, tmp_path):
    config = TrainingConfig(
        learning_rate=0.0, num_train_epochs=1, max_length=8, truncation="tail", lexical_weight=0.0
    )  # the transformer alone: the lexical half reads every word
    model_dir = fine_tune(few_splits[TRAIN], few_splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)
    texts = ["crash report" + " the app closes when I press save twice"]
    texts.append("unrelated words" + texts[0].removeprefix("crash report"))

    tail_only = predict_probabilities(model_dir, texts, 512)
    (model_dir / RECIPE_FILE).unlink()  # as a model from before recipes: raw text, cut at 512 tokens
    legacy = predict_probabilities(model_dir, texts, 512)

    assert torch.equal(tail_only[0], tail_only[1])  # only the last 6 words are read: the same for both
    assert not torch.equal(legacy[0], legacy[1])


def test_the_published_model_blends_its_lexical_half_into_every_score(
    store, tiny_model_dir, splits, tmp_path
):
    # 6 epochs: the tiny model learns enough for a temperature inside the bounds (1.24)
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=6, lexical_weight=0.6)
    model_dir = fine_tune(splits[TRAIN], splits[VALIDATION], _spec(tiny_model_dir, config), tmp_path)
    texts = splits[EVAL]["text"].tolist()

    blended = predict_probabilities(model_dir, texts, 128)
    transformer = predict_probabilities(model_dir, texts, 128, lexical=False)
    lexical_model = LexicalModel.load(model_dir)
    lexical = lexical_model.probabilities(texts)

    record = json.loads((model_dir / "training.json").read_text())["lexical"]
    temperature = record["transformer_temperature"]
    assert lexical_model.transformer_temperature == temperature
    assert torch.allclose(blended, 0.4 * soften(transformer, temperature) + 0.6 * lexical)
    assert not torch.allclose(blended, transformer)
    assert record["blend_weight"] == 0.6
    assert record["texts"] == len(splits[TRAIN]) + len(splits[VALIDATION])  # it selects nothing: both
    # the temperature is the one that fits the transformer best on the validation split (scored
    # there by the Trainer in bf16, here in fp32: close, not equal)
    validation = splits[VALIDATION]
    validation_probabilities = predict_probabilities(
        model_dir, validation["text"].tolist(), 128, lexical=False
    )
    refitted = fit_temperature(validation_probabilities.log(), [LABEL_TO_ID[x] for x in validation["label"]])
    assert temperature == pytest.approx(refitted, rel=0.02)
    assert MIN_TEMPERATURE < temperature < MAX_TEMPERATURE


def test_without_texts_of_every_label_the_transformer_is_published_alone(
    store, tiny_model_dir, few_splits, tmp_path, caplog
):
    train_rows, validation_rows = (
        few_splits[name][few_splits[name]["label"] != "general_inquiry"] for name in (TRAIN, VALIDATION)
    )
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, lexical_weight=0.6)

    model_dir = fine_tune(train_rows, validation_rows, _spec(tiny_model_dir, config), tmp_path)

    assert LexicalModel.load(model_dir) is None
    record = json.loads((model_dir / "training.json").read_text())["lexical"]
    assert record == {"skipped": "no training texts labelled general_inquiry"}
    assert "published without its lexical half: no training texts labelled general_inquiry" in caplog.text
    texts = few_splits[EVAL]["text"].tolist()
    assert torch.equal(
        predict_probabilities(model_dir, texts, 128),
        predict_probabilities(model_dir, texts, 128, lexical=False),
    )
