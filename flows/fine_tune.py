"""The ``fine-tune`` flow: train a challenger from a curated dataset version, by reference.

Inputs and output are S3 references (a dataset version and an output prefix), never in-memory
objects, so the flow runs in-process on the embedded default or as a deployment on the ``gpu`` work
pool on another machine.
"""

import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
from prefect import flow

from retrainer.core.training import RunOptions, TrainingSpec
from retrainer.core.training_plan import INCREMENTAL, TrainingPlan, incremental_config, incremental_splits
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, TrainingConfig
from tasks.checkpoints import CheckpointSync
from tasks.dataset import TRAIN, VALIDATION, check_splits, read_curated_task
from tasks.registry import fetch_model_task, trained_on
from tasks.train import (
    fine_tune_task,
    record_plan,
    upload_challenger_task,
    warn_when_a_gpu_model_trains_on_cpu,
)
from tasks.train_ddp import fine_tune_on_processes_task, training_process_count


def checkpoint_prefix(
    settings: RetrainerSettings, dataset_version: str, plan: TrainingPlan | None = None, processes: int = 1
) -> str:
    """Fixed per (dataset version, base model, training config, plan, training processes): a rerun of
    the same job resumes (on more processes a step is a larger batch, so their checkpoints differ)."""
    recipe = json.dumps(
        [settings.base_model, settings.base_model_revision, settings.training.model_dump()]
        + ([plan.model_dump(), settings.incremental.model_dump()] if _warm(plan) else [])
        + ([{"processes": processes}] if processes > 1 else []),
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{dataset_checkpoints_prefix(settings, dataset_version)}{digest}/"


def dataset_checkpoints_prefix(settings: RetrainerSettings, dataset_version: str) -> str:
    """Where the checkpoints of every fine-tune of `dataset_version` are kept (one folder per recipe)."""
    return f"{settings.s3.runs_prefix}checkpoints/{dataset_version}/"


@flow(name="fine-tune")
def fine_tune_flow(
    dataset_version: str,
    output_prefix: str,
    training: TrainingConfig | None = None,
    base_model: str | None = None,
    resources: Resources | None = None,
    plan: TrainingPlan | None = None,
    base_model_revision: str | None = None,
) -> str:
    """Fine-tune the base model on `dataset_version` and upload the trained model under `output_prefix`.

    Args:
        dataset_version: curated dataset version id (``datasets/<version>/version.json``).
        output_prefix: S3 prefix (in the configured bucket) that receives the trained model.
        training: hyper-parameters (default: the configured training settings).
        base_model: hub id or local folder (default: the configured base model).
        base_model_revision: its hub revision (default: the configured one for the configured base
            model, ``main`` for another).
        resources: settings and store of an in-process caller (the retrain flow); empty (a deployment
            run on the gpu pool): read from the worker's environment when the run starts.
        plan: how to train (`retrainer.core.training_plan`): incremental starts from the champion's
            weights on the tickets it has not seen plus a replayed sample; empty: full.
    """
    overrides = {"training": training, "base_model": base_model, "base_model_revision": base_model_revision}
    resources = (resources or Resources.from_environment()).with_overrides(**overrides)
    settings, store = resources.settings, resources.store
    splits = check_splits(read_curated_task(store, dataset_version))
    rows = (splits[TRAIN], splits[VALIDATION])
    lexical_rows = pd.concat(rows)
    spec = TrainingSpec(settings.base_model, settings.base_model_revision, settings.training)
    if _warm(plan):
        champion_dir = fetch_model_task(store, plan.warm_start_from, settings.model_cache_dir)
        seed = settings.training.seed + plan.generation
        *rows, lexical_rows = incremental_splits(rows, trained_on(champion_dir), settings.incremental, seed)
        config = incremental_config(settings.training, settings.incremental)
        spec = replace(spec, config=config, warm_start=champion_dir)
    warn_when_a_gpu_model_trains_on_cpu(settings, len(rows[0]), spec.config.num_train_epochs)
    processes = training_process_count(settings.training_processes)
    checkpoints = CheckpointSync(store, checkpoint_prefix(settings, dataset_version, plan, processes))
    tokenized_cache = settings.work_dir / "tokenized" / dataset_version  # versions never change
    with tempfile.TemporaryDirectory(prefix="fine-tune-", dir=settings.scratch_dir()) as scratch:
        if processes > 1:  # PyTorch DDP on this machine (tasks/train_ddp.py)
            model_dir = fine_tune_on_processes_task(
                *rows,
                spec,
                Path(scratch),
                processes=processes,
                checkpoints=checkpoints,
                tokenized_cache=tokenized_cache,
                lexical_rows=lexical_rows,
            )
        else:
            model_dir = fine_tune_task(
                *rows,
                spec,
                Path(scratch),
                options=RunOptions(checkpoints=checkpoints, tokenized_cache=tokenized_cache),
                lexical_rows=lexical_rows,
            )
        record_plan(model_dir, plan or TrainingPlan(mode="full", reason="no plan given"), *rows)
        upload_challenger_task(store, model_dir, output_prefix)
    return output_prefix


def _warm(plan: TrainingPlan | None) -> bool:
    return plan is not None and plan.mode == INCREMENTAL
