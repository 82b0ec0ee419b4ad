"""The ``fine-tune`` flow: train a challenger from a curated dataset version, by reference.

Inputs and output are S3 references (a dataset version and an output prefix), never in-memory
objects, so the flow runs in-process on the embedded default or as a deployment on the ``gpu`` work
pool on another machine.
"""

import hashlib
import json
import tempfile
from pathlib import Path

from prefect import flow

from retrainer.core.training import RunOptions, TrainingSpec
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, TrainingConfig
from tasks.checkpoints import CheckpointSync
from tasks.dataset import TRAIN, VALIDATION, check_splits, read_curated_task
from tasks.train import fine_tune_task, upload_challenger_task


def checkpoint_prefix(settings: RetrainerSettings, dataset_version: str) -> str:
    """Fixed per (dataset version, base model, training config): a rerun of the same job resumes."""
    recipe = json.dumps(
        [settings.base_model, settings.base_model_revision, settings.training.model_dump()], sort_keys=True
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{settings.s3.runs_prefix}checkpoints/{dataset_version}/{digest}/"


@flow(name="fine-tune")
def fine_tune_flow(
    dataset_version: str,
    output_prefix: str,
    training: TrainingConfig | None = None,
    base_model: str | None = None,
    resources: Resources | None = None,
) -> str:
    """Fine-tune the base model on `dataset_version` and upload the trained model under `output_prefix`.

    Args:
        dataset_version: curated dataset version id (``datasets/<version>/curated.parquet``).
        output_prefix: S3 prefix (in the configured bucket) that receives the trained model.
        training: hyper-parameters (default: the configured training settings).
        base_model: hub id or local folder (default: the configured base model).
        resources: settings and store of an in-process caller (the retrain flow); empty (a deployment
            run on the gpu pool): read from the worker's environment when the run starts.
    """
    overrides = {"training": training, "base_model": base_model}
    resources = (resources or Resources.from_environment()).with_overrides(**overrides)
    settings, store = resources.settings, resources.store
    splits = check_splits(read_curated_task(store, dataset_version))
    with tempfile.TemporaryDirectory(prefix="fine-tune-", dir=settings.scratch_dir()) as scratch:
        model_dir = fine_tune_task(
            splits[TRAIN],
            splits[VALIDATION],
            TrainingSpec(settings.base_model, settings.base_model_revision, settings.training),
            Path(scratch),
            options=RunOptions(
                checkpoints=CheckpointSync(store, checkpoint_prefix(settings, dataset_version)),
                tokenized_cache=settings.work_dir / "tokenized" / dataset_version,  # versions never change
            ),
        )
        upload_challenger_task(store, model_dir, output_prefix)
    return output_prefix
