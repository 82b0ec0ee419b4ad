"""Training on several processes of one machine (PyTorch DDP launched by torchrun), for real: two CPU
processes over gloo train the tiny BERT, one of them uploads, and a killed run resumes."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, TrainerCallback

from app.samples import generate_tickets
from flows.fine_tune import checkpoint_prefix
from retrainer.core import trainer_arguments
from retrainer.core.labels import LABELS
from retrainer.core.training import TrainingSpec, training_record
from retrainer.settings import RetrainerSettings, TrainingConfig
from tasks.checkpoints import CheckpointSync
from tasks.dataset import TRAIN, VALIDATION, check_splits
from tasks.train import upload_challenger
from tasks.train_ddp import TrainingProcessesError, fine_tune_on_processes, training_process_count
from tests.tickets import merge_curated

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "runs/checkpoints/ds-ddp/abc/"


class MachineLostError(RuntimeError):
    """Stands in for a killed machine: raised in every process once the first checkpoint is in S3."""


class MachineLostAfterFirstCheckpoint(TrainerCallback):
    """Given to the processes by import path: training stops after its first checkpoint, and once that
    is in S3 (the checkpoints' callback, called before this one, waits for its uploads at the end of
    training) every process dies."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        raise MachineLostError(f"killed after saving step {state.global_step}")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_two_processes_train_over_gloo_one_uploads_and_a_killed_run_resumes(
    store, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the processes import this module's callback
    tickets = generate_tickets(200, seed=1).assign(source_key="incoming/a.csv", source_etag="e", source_row=1)
    splits = check_splits(merge_curated(None, tickets, 0.2, 0.1))
    config = TrainingConfig(learning_rate=5e-3, num_train_epochs=2, average_share=1.0)
    arguments = (splits[TRAIN], splits[VALIDATION], TrainingSpec(str(tiny_model_dir), "main", config))
    sync = CheckpointSync(store, PREFIX)
    caplog.set_level(logging.INFO, logger="retrainer")

    with pytest.raises(TrainingProcessesError, match=r"(?s)exited with code 1.*MachineLostError: killed"):
        fine_tune_on_processes(
            *arguments,
            tmp_path / "first-machine",
            processes=2,
            checkpoints=sync,
            rank_callbacks=(f"{__name__}:MachineLostAfterFirstCheckpoint",),
        )
    saved = json.loads(store.get(PREFIX + "latest.json")[0])
    caplog.clear()
    model_dir = fine_tune_on_processes(*arguments, tmp_path / "second-machine", processes=2, checkpoints=sync)

    record, lines = training_record(model_dir), caplog.messages
    epoch = math.ceil(len(splits[TRAIN]) / (2 * 16))  # a step: 16 tickets on each of the 2 processes
    assert record["processes"] == 2 and record["max_steps"] == record["global_step"] == 2 * epoch
    assert saved["step"] == epoch and record["resumed_from_step"] == epoch
    assert record["averaged_steps"] == [epoch, 2 * epoch]  # the killed run's epoch is averaged too
    for rank in (0, 1):  # both processes trained to the end
        assert any(
            line.startswith(f"[rank {rank}]")
            and f"process {rank} of 2 trained to step {2 * epoch} of" in line
            for line in lines
        )
    # exactly one process uploaded the new checkpoint, holding the RNG state of both
    uploads = [line for line in lines if " kept in s3://" in line]
    assert (
        len(uploads) == 1 and uploads[0].startswith("[rank 0]") and f"checkpoint-{2 * epoch} " in uploads[0]
    )
    names = {info.key.rsplit("/", 1)[1] for info in store.list_objects(f"{PREFIX}checkpoint-{2 * epoch}/")}
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= names
    # the published model loads with the product's labels, its lexical half fitted once on all rows
    upload_challenger(store, model_dir, "runs/r1/challenger/")
    store.download_prefix("runs/r1/challenger/", tmp_path / "published")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "published")
    assert model.config.id2label == dict(enumerate(LABELS))
    assert record["lexical"]["texts"] == len(splits[TRAIN]) + len(splits[VALIDATION])
    assert not (tmp_path / "second-machine" / "inputs").exists()  # no customer text left behind


def test_the_process_count_is_the_setting_or_one_per_visible_gpu(monkeypatch):
    assert RetrainerSettings().training_processes == 1
    monkeypatch.setenv("RETRAINER_TRAINING_PROCESSES", "gpus")
    assert RetrainerSettings().training_processes == "gpus"
    for refused in ("0", "65", "all"):
        monkeypatch.setenv("RETRAINER_TRAINING_PROCESSES", refused)
        with pytest.raises(ValueError, match="invalid setting RETRAINER_TRAINING_PROCESSES"):
            RetrainerSettings()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (training_process_count("gpus"), training_process_count(3)) == (1, 3)  # CPUs: over gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert (training_process_count("gpus"), training_process_count(2)) == (4, 2)
    with pytest.raises(ValueError, match="RETRAINER_TRAINING_PROCESSES=8, but this machine has 4 GPUs"):
        training_process_count(8)


def test_checkpoints_of_another_process_count_are_not_resumed_and_one_process_keeps_its_prefix():
    settings = RetrainerSettings()
    one = checkpoint_prefix(settings, "ds-1")
    assert checkpoint_prefix(settings, "ds-1", processes=1) == one
    assert (
        len(
            {
                one,
                checkpoint_prefix(settings, "ds-1", processes=2),
                checkpoint_prefix(settings, "ds-1", None, 4),
            }
        )
        == 3
    )


def test_on_cpus_a_process_group_trains_distributed_over_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_arguments.distributed_arguments() == {}  # alone: the Trainer's arguments as before
    monkeypatch.setattr(trainer_arguments, "process_group", lambda: (1, 2))
    assert trainer_arguments.distributed_arguments() == {"use_cpu": True, "ddp_backend": "gloo"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_arguments.distributed_arguments() == {}  # on GPUs the Trainer picks NCCL
