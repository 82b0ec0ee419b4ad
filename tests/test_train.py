"""Fine-tuning: checkpoints in S3 let a killed run resume; the run records how it was made."""

import json

import pytest
from transformers import TrainerCallback

from retrainer.samples import generate_tickets
from retrainer.settings import TrainingConfig
from tasks.checkpoints import CheckpointSync
from tasks.dataset import TRAIN, VALIDATION, check_splits, merge_curated
from tasks.train import fine_tune


class MachineLostError(RuntimeError):
    """Stands in for a killed worker: raised right after the first checkpoint reached S3."""


class _DieAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise MachineLostError(f"killed after saving step {state.global_step}")


@pytest.fixture
def splits():
    tickets = generate_tickets(300, seed=1).assign(source_key="incoming/a.csv", source_etag="e", source_row=1)
    return check_splits(merge_curated(None, tickets, 0.2, 0.1))


def test_a_killed_run_resumes_from_its_last_checkpoint_in_s3_and_finishes(
    store, tiny_model_dir, splits, tmp_path
):
    sync = CheckpointSync(store, "runs/checkpoints/ds-test/abc/")
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=3)
    arguments = (splits[TRAIN], splits[VALIDATION], str(tiny_model_dir), "main", config)

    with pytest.raises(MachineLostError):
        fine_tune(*arguments, tmp_path / "first-machine", sync, [_DieAfterFirstCheckpoint()])
    saved = json.loads(store.get("runs/checkpoints/ds-test/abc/latest.json")[0])
    model_dir = fine_tune(*arguments, tmp_path / "second-machine", sync)

    record = json.loads((model_dir / "training.json").read_text())
    assert saved["step"] > 0 and record["resumed_from_step"] == saved["step"]
    assert record["global_step"] == record["max_steps"] > saved["step"]  # it finished the remaining epochs
    assert record["seed"] == 42 and "transformers" in record["library_versions"]
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "training_args.bin").exists()


def test_a_run_without_checkpoints_starts_fresh_and_says_so(store, tiny_model_dir, splits, tmp_path):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1)

    model_dir = fine_tune(splits[TRAIN], splits[VALIDATION], str(tiny_model_dir), "main", config, tmp_path)

    record = json.loads((model_dir / "training.json").read_text())
    assert record["resumed_from_step"] is None and record["global_step"] == record["max_steps"]


def test_tokenized_splits_are_cached_per_dataset_version(store, tiny_model_dir, splits, tmp_path):
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1)
    cache = tmp_path / "tokenized" / "ds-1"
    arguments = (splits[TRAIN], splits[VALIDATION], str(tiny_model_dir), "main", config)

    fine_tune(*arguments, tmp_path / "first", tokenized_cache=cache)
    files = {path: path.stat().st_mtime_ns for path in cache.glob("*.arrow")}
    fine_tune(*arguments, tmp_path / "second", tokenized_cache=cache)

    assert {path.name.split("-")[0] for path in files} == {"train", "validation"}
    assert {path: path.stat().st_mtime_ns for path in cache.glob("*.arrow")} == files  # reused, not rewritten


def test_the_truncation_side_is_part_of_the_recipe_and_saved_with_the_model(
    store, tiny_model_dir, splits, tmp_path
):
    from transformers import AutoTokenizer

    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, max_length=8, truncation_side="left")

    model_dir = fine_tune(splits[TRAIN], splits[VALIDATION], str(tiny_model_dir), "main", config, tmp_path)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.truncation_side == "left"
    ids = tokenizer("one two three four five six seven eight nine ten", truncation=True, max_length=8)[
        "input_ids"
    ]
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("ten")  # the end of the text is kept
