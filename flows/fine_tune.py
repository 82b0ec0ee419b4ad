"""The ``fine-tune`` flow: train a challenger from a curated dataset version, by reference.

Inputs and output are S3 references (a dataset version, an output prefix, where checkpoints go) and the
run's `TrainingRecipe` (a pydantic value, `retrainer.core.training_plan`), never in-memory objects, so
the flow runs in-process on the embedded default or as a deployment on the ``gpu`` work pool on another
machine. It picks the rows the recipe's plan trains on and runs the fine-tune step in its own process
(tasks/train.py) or on several (tasks/train_ddp.py).
"""

import hashlib
import json
import tempfile
from pathlib import Path

import pandas as pd
from prefect import flow

from retrainer.core.training import RunOptions, TrainingSpec
from retrainer.core.training_plan import TrainingRecipe, incremental_splits
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore
from tasks.checkpoints import CheckpointSync
from tasks.dataset import TRAIN, VALIDATION, check_splits, read_curated_task
from tasks.known_predictions import record_eval_predictions_task
from tasks.registry import fetch_model_task, trained_on
from tasks.train import fine_tune_task, upload_challenger_task, warn_when_a_gpu_model_trains_on_cpu
from tasks.train_ddp import fine_tune_on_processes_task, training_process_count

Rows = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
"""(train, validation, lexical) rows of one fine-tune."""


def checkpoint_prefix(
    settings: RetrainerSettings,
    dataset_version: str,
    recipe: TrainingRecipe | None = None,
    processes: int = 1,
    under: str | None = None,
) -> str:
    """Fixed per (dataset version, base model, training config, plan, training processes): a rerun of
    the same job resumes (on more processes a step is a larger batch, so their checkpoints differ). Under
    `under` (default: `dataset_checkpoints_prefix`); `recipe` defaults to the settings' own."""
    recipe = recipe or TrainingRecipe.for_run(settings)
    parts = [recipe.base_model, recipe.base_model_revision, recipe.config.model_dump()]
    if recipe.warm:
        parts += [recipe.plan.model_dump(), recipe.incremental.model_dump()]
    if processes > 1:
        parts.append({"processes": processes})
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{under or dataset_checkpoints_prefix(settings, dataset_version)}{digest}/"


def dataset_checkpoints_prefix(settings: RetrainerSettings, dataset_version: str) -> str:
    """Where the checkpoints of every fine-tune of `dataset_version` are kept (one folder per recipe)."""
    return f"{settings.s3.runs_prefix}checkpoints/{dataset_version}/"


@flow(name="fine-tune")
def fine_tune_flow(
    dataset_version: str,
    output_prefix: str,
    recipe: TrainingRecipe | None = None,
    checkpoints_prefix: str | None = None,
    resources: Resources | None = None,
    eval_predictions_key: str | None = None,
) -> str:
    """Fine-tune as `recipe` says on `dataset_version` and upload the trained model under `output_prefix`.

    Args:
        dataset_version: curated dataset version id (``datasets/<version>/version.json``).
        output_prefix: S3 prefix (in the configured bucket) that receives the trained model.
        recipe: what to train and how, decided once by the retrain run (base model and revision, the
            config, the plan: incremental starts from the champion's weights on the tickets it has not
            seen plus a replayed sample). Empty: a full run of the configured settings.
        checkpoints_prefix: where this dataset version's checkpoints are kept, one folder per recipe;
            the retrain run passes the folder it deletes once it has decided (default:
            `dataset_checkpoints_prefix`).
        resources: settings and store of an in-process caller (the retrain flow); empty (a deployment
            run on the gpu pool): read from the worker's environment when the run starts.
        eval_predictions_key: where to store the trained model's predictions on the dataset version's
            eval split, scored here, where the model is (the retrain run passes it to a deployment on
            the gpu pool, and reads them back instead of scoring the challenger on its cpu worker).

    Returns the output prefix.
    """
    resources = resources or Resources.from_environment()
    settings, store = resources.settings, resources.store
    recipe = recipe or TrainingRecipe.for_run(settings)
    rows, warm_start = training_rows(store, settings, dataset_version, recipe)
    spec = TrainingSpec(
        recipe.base_model, recipe.base_model_revision, recipe.config, warm_start=warm_start, plan=recipe.plan
    )
    warn_when_a_gpu_model_trains_on_cpu(
        settings, len(rows[0]), recipe.config.num_train_epochs, recipe.base_model
    )
    processes = training_process_count(settings.training_processes)
    prefix = checkpoint_prefix(settings, dataset_version, recipe, processes, checkpoints_prefix)
    with tempfile.TemporaryDirectory(prefix="fine-tune-", dir=settings.scratch_dir()) as scratch:
        model_dir = train(
            rows, spec, Path(scratch), processes, CheckpointSync(store, prefix), settings, dataset_version
        )
        upload_challenger_task(store, model_dir, output_prefix)
        if eval_predictions_key:
            record_eval_predictions_task(
                store, model_dir, dataset_version, eval_predictions_key, settings.training.max_length
            )
    return output_prefix


def training_rows(
    store: ObjectStore, settings: RetrainerSettings, dataset_version: str, recipe: TrainingRecipe
) -> tuple[Rows, Path | None]:
    """The (train, validation, lexical) rows the recipe trains on, and the champion's local folder to
    start from (incremental: the tickets it has not seen plus a replayed sample; full: every one)."""
    splits = check_splits(read_curated_task(store, dataset_version))
    rows = (splits[TRAIN], splits[VALIDATION])
    if not recipe.warm:
        return (*rows, pd.concat(rows)), None
    champion_dir = fetch_model_task(store, recipe.plan.warm_start_from, settings.model_cache_dir)
    seed = recipe.config.seed + recipe.plan.generation
    return incremental_splits(rows, trained_on(champion_dir), recipe.incremental, seed), champion_dir


def train(
    rows: Rows,
    spec: TrainingSpec,
    scratch: Path,
    processes: int,
    checkpoints: CheckpointSync,
    settings: RetrainerSettings,
    dataset_version: str,
) -> Path:
    """Train in this process, or on `processes` processes of this machine (PyTorch DDP); the model folder."""
    *splits, lexical_rows = rows
    tokenized_cache = settings.work_dir / "tokenized" / dataset_version  # versions never change
    if processes > 1:  # PyTorch DDP on this machine (tasks/train_ddp.py)
        return fine_tune_on_processes_task(
            *splits,
            spec,
            scratch,
            processes=processes,
            checkpoints=checkpoints,
            tokenized_cache=tokenized_cache,
            lexical_rows=lexical_rows,
        )
    options = RunOptions(checkpoints=checkpoints, tokenized_cache=tokenized_cache)
    return fine_tune_task(*splits, spec, scratch, options=options, lexical_rows=lexical_rows)
