"""Typed configuration: environment variables, defaults, overrides, validation."""

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from retrainer.core.base_models import resolve_base_model
from retrainer.settings import (
    PACKAGED_BASE_MODEL,
    REFERENCE_RECIPE,
    TRAINING_PRESETS,
    InvalidSettingError,
    RetrainerSettings,
    TrainingConfig,
)


def test_defaults_are_the_tuned_recipe_and_the_packaged_model(monkeypatch):
    for name in ("RETRAINER_BASE_MODEL", "RETRAINER_S3__BUCKET", "RETRAINER_TRAINING_PRESET"):
        monkeypatch.delenv(name, raising=False)
    settings = RetrainerSettings()

    assert settings.base_model == PACKAGED_BASE_MODEL
    assert settings.training == TrainingConfig(
        learning_rate=1e-4,
        per_device_train_batch_size=16,
        num_train_epochs=8,
        warmup_ratio=0.1,
        weight_decay=0.01,
        max_length=128,
        truncation="head_tail",
        clean_text=True,
        label_smoothing=0.0,
        attention_dropout=None,
        length_grouping=True,
        average_share=0.6,
    )
    assert settings.s3.bucket == "ticket-retrainer"


def test_the_reference_preset_is_the_seed_projects_recipe():
    assert REFERENCE_RECIPE.model_dump(exclude={"per_device_eval_batch_size", "head_share", "seed"}) == {
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "num_train_epochs": 3.0,
        "warmup_ratio": 0.0,
        "weight_decay": 0.01,
        "max_length": 128,
        "truncation": "head",
        "clean_text": False,
        # Customer data is masked in every preset: masking protects customers, not part of the recipe.
        "mask_secret": True,
        "mask_email": True,
        "mask_card": True,
        "mask_ip": True,
        "mask_iban": True,
        "mask_phone": True,
        "label_smoothing": 0.0,
        "attention_dropout": None,
        "length_grouping": False,
        "average_share": 0.0,  # the best epoch by accuracy, as the seed kept
        "lexical_weight": 0.0,  # the transformer alone
        "gpu_train_batch_size": None,  # the seed's batch on every device
    }
    assert REFERENCE_RECIPE.for_device(cuda=True) == REFERENCE_RECIPE


def test_on_a_gpu_the_tuned_recipe_takes_larger_batches_with_the_learning_rate_scaled_by_the_square_root():
    tuned = TrainingConfig()

    on_gpu = tuned.for_device(cuda=True)

    assert tuned.for_device(cuda=False) == tuned
    assert (on_gpu.per_device_train_batch_size, on_gpu.learning_rate) == (32, pytest.approx(1e-4 * 2**0.5))
    assert on_gpu.model_dump(exclude={"per_device_train_batch_size", "learning_rate"}) == tuned.model_dump(
        exclude={"per_device_train_batch_size", "learning_rate"}
    )
    quadrupled = TrainingConfig(per_device_train_batch_size=8, learning_rate=3e-5).for_device(cuda=True)
    assert (quadrupled.per_device_train_batch_size, quadrupled.learning_rate) == (32, pytest.approx(6e-5))
    assert TrainingConfig(gpu_train_batch_size=None).for_device(cuda=True) == TrainingConfig(
        gpu_train_batch_size=None
    )


@pytest.mark.parametrize(
    ("epochs", "share", "averaged"),
    [(8, 0.6, 5), (5, 0.6, 3), (3, 0.6, 2), (10, 0.6, 6), (1, 0.6, 1), (2.5, 0.6, 2), (5, 0, 0)],
)
def test_averaging_takes_a_share_of_the_last_epochs_never_none_of_them(epochs, share, averaged):
    assert TrainingConfig(num_train_epochs=epochs, average_share=share).averaged_epochs() == averaged


def test_environment_variables_fill_nested_settings(monkeypatch):
    monkeypatch.setenv("RETRAINER_S3__ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("RETRAINER_TRAINING__LEARNING_RATE", "5e-5")
    monkeypatch.setenv("RETRAINER_BASE_MODEL", "distilbert-base-uncased")

    settings = RetrainerSettings()
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert settings.training.learning_rate == 5e-5
    assert settings.base_model == "distilbert-base-uncased"


def test_an_empty_attention_dropout_means_the_base_models_own(monkeypatch):
    monkeypatch.setenv("RETRAINER_TRAINING__ATTENTION_DROPOUT", "0.05")
    assert RetrainerSettings().training.attention_dropout == 0.05

    monkeypatch.setenv("RETRAINER_TRAINING__ATTENTION_DROPOUT", "")
    assert RetrainerSettings().training.attention_dropout is None


def test_run_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("RETRAINER_TRAINING__LEARNING_RATE", "5e-5")

    # a run's overrides on top of the settings from the environment
    settings = RetrainerSettings().with_overrides(
        training=TrainingConfig(learning_rate=1e-4), base_model="bert-base-uncased"
    )
    assert settings.training.learning_rate == 1e-4
    assert settings.base_model == "bert-base-uncased"


def test_a_preset_is_the_base_recipe_and_single_fields_override_it(monkeypatch):
    monkeypatch.setenv("RETRAINER_TRAINING_PRESET", "reference")
    assert RetrainerSettings().training == REFERENCE_RECIPE

    monkeypatch.setenv("RETRAINER_TRAINING__LEARNING_RATE", "3e-5")
    assert RetrainerSettings().training == REFERENCE_RECIPE.model_copy(update={"learning_rate": 3e-5})

    monkeypatch.setenv("RETRAINER_TRAINING_PRESET", "fastest")
    with pytest.raises(InvalidSettingError, match="RETRAINER_TRAINING_PRESET: Input should be 'tuned'"):
        RetrainerSettings()


def test_the_old_preset_name_is_refused_with_its_new_name(monkeypatch):
    monkeypatch.setenv("RETRAINER_TRAINING_PRESET", "seed")
    with pytest.raises(InvalidSettingError, match="RETRAINER_TRAINING_PRESET") as refused:
        RetrainerSettings()
    assert "renamed 'reference'" in str(refused.value)


def test_every_preset_is_an_allowed_value_of_the_preset_setting():
    allowed = get_args(RetrainerSettings.model_fields["training_preset"].annotation)
    assert sorted(allowed) == sorted(TRAINING_PRESETS)


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("RETRAINER_EVAL_FRACTION", "0.9")
    with pytest.raises(InvalidSettingError, match=r"RETRAINER_EVAL_FRACTION: Input should be less than 0\.5"):
        RetrainerSettings()
    with pytest.raises(ValidationError):
        TrainingConfig(per_device_train_batch_size=0)


def test_hub_ids_and_folders_pass_through_and_the_packaged_model_resolves_to_its_folder(tmp_path):
    assert resolve_base_model("distilbert-base-uncased") == "distilbert-base-uncased"
    assert resolve_base_model(str(tmp_path)) == str(tmp_path)
    packaged = resolve_base_model(PACKAGED_BASE_MODEL)
    assert packaged.endswith("model")
    assert (Path(packaged) / "model.safetensors").is_file()


def test_an_empty_endpoint_means_aws_s3(monkeypatch):
    monkeypatch.setenv("RETRAINER_S3__ENDPOINT_URL", "")
    assert RetrainerSettings().s3.endpoint_url is None


def test_training_samples_as_configured_with_the_precision_this_hardware_supports(tmp_path):
    import torch

    from retrainer.core.devices import cpu_supports_bf16
    from retrainer.core.trainer_arguments import training_arguments

    arguments = training_arguments(TrainingConfig(), tmp_path)
    shuffled = training_arguments(TrainingConfig(length_grouping=False, label_smoothing=0.1), tmp_path)

    assert arguments.train_sampling_strategy == "group_by_length"
    assert shuffled.train_sampling_strategy == "random"
    assert (arguments.label_smoothing_factor, shuffled.label_smoothing_factor) == (0.0, 0.1)
    assert arguments.warmup_steps == 0.1 and arguments.learning_rate == 1e-4
    if not torch.cuda.is_available():
        assert arguments.bf16 is cpu_supports_bf16()  # bf16 autocast only where the CPU does bf16
        assert not arguments.fp16
