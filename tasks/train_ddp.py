"""The fine-tune step on several processes of one machine (PyTorch DDP), launched by torch's own launcher;
tasks/train.py is the same step in the task's own process (the fine-tune flow picks one).

The fine-tune task (`fine_tune_on_processes`) restores the checkpoints, writes the rows (Parquet) and what
to train (JSON) to its scratch folder, and starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m tasks.train_ddp JOB``. Every process (`main`) joins the process group and runs
the same `retrainer.core.training.fine_tune`: the Trainer trains on all of them (DDP: each process its
share of every batch), the first process alone uploads checkpoints and writes the model folder, and
the task uploads that folder once, as after an in-process run. The launcher's output, every process's
lines, is streamed into the run log; a process that fails fails the task with the launcher's exit code
and its last lines.

One machine only (``--standalone``): several machines would need a rendezvous between pods (e.g. a
Kubeflow PyTorchJob or a JobSet), which nothing here provides.
"""

import ctypes
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch
from torch.distributed.elastic.multiprocessing.errors import record
from transformers import TrainerCallback

from retrainer.core.training import TRAINING_RECORD, RunOptions, TrainingSpec, fine_tune
from retrainer.core.training_plan import TrainingPlan
from retrainer.settings import ALL_GPUS, CLI_ENVIRONMENT_DEFAULTS, S3Settings, TrainingConfig
from retrainer.storage import open_store
from tasks.checkpoints import CheckpointSync
from tasks.common import once_task, run_logger
from tasks.training_progress import RunLogCallback

JOB_FILE = "job.json"
ROWS_FILES = {"train": "train.parquet", "validation": "validation.parquet", "lexical": "lexical.parquet"}
TAIL_LINES = 40
"""The launcher's last lines quoted in the error of a failed run."""
PR_SET_PDEATHSIG = 1
"""Linux's prctl option: a signal for this process when its parent dies."""


class TrainingProcessesError(RuntimeError):
    """A training process failed (or the launcher did): the fine-tune failed."""


def training_process_count(setting: int | str) -> int:
    """How many processes the fine-tune trains on (`RetrainerSettings.training_processes`): the number
    set, or for ``gpus`` one per visible CUDA GPU (1 without any). More than the GPUs is refused: two
    processes cannot share a GPU under NCCL."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == ALL_GPUS:
        return max(1, gpus)
    if gpus and setting > gpus:
        raise ValueError(f"RETRAINER_TRAINING_PROCESSES={setting}, but this machine has {gpus} GPUs")
    return int(setting)


def fine_tune_on_processes(
    train_rows: pd.DataFrame,
    validation_rows: pd.DataFrame,
    spec: TrainingSpec,
    output_dir: Path,
    *,
    processes: int,
    checkpoints: CheckpointSync | None = None,
    tokenized_cache: Path | None = None,
    lexical_rows: pd.DataFrame | None = None,
    rank_callbacks: tuple[str, ...] = (),
) -> Path:
    """`retrainer.core.training.fine_tune` of these rows on `processes` processes of this machine; the
    model folder the first one wrote (``output_dir/model``).

    `checkpoints` are restored here, before the launch, into ``output_dir/checkpoints``, where every
    process resumes from the latest; the first process uploads the new ones. `rank_callbacks` are
    import paths (``module:Class``) of more Trainer callbacks each process builds without arguments
    (callback objects cannot cross to the processes). The processes read S3 credentials from boto3's
    standard chain (this process's environment, which they inherit), never from a file.
    """
    if processes < 2:
        raise ValueError(f"{processes} process: train in-process (`fine_tune`) instead")
    inputs = output_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    try:
        job = _write_job(inputs, (train_rows, validation_rows, lexical_rows), spec, output_dir)
        resume_from = checkpoints.restore(output_dir / "checkpoints") if checkpoints else None
        job.update(
            checkpoints=_sync_json(checkpoints, resume_from),
            tokenized_cache=str(tokenized_cache) if tokenized_cache else None,
            callbacks=list(rank_callbacks),
        )
        (inputs / JOB_FILE).write_text(json.dumps(job, indent=2))
        _launch(processes, inputs / JOB_FILE)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)  # customer text: not kept beyond the run
    model_dir = output_dir / "model"
    if not (model_dir / TRAINING_RECORD).is_file():
        raise TrainingProcessesError(f"the {processes} training processes ended without writing {model_dir}")
    return model_dir


# Training is not I/O: a retry would only repeat a deterministic failure.
fine_tune_on_processes_task = once_task(fine_tune_on_processes, "fine-tune")


def _write_job(
    inputs: Path,
    rows: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None],
    spec: TrainingSpec,
    output: Path,
) -> dict:
    """Write the rows as Parquet beside the job file; the job, without the checkpoints' part."""
    for name, frame in zip(ROWS_FILES, rows, strict=True):
        if frame is not None:
            frame.to_parquet(inputs / ROWS_FILES[name], index=False)
    return {
        "lexical_rows": rows[2] is not None,
        "base_model": spec.base_model,
        "revision": spec.revision,
        "config": spec.config.model_dump(mode="json"),
        "warm_start": str(spec.warm_start) if spec.warm_start else None,
        "plan": spec.plan.model_dump(mode="json") if spec.plan else None,
        "output_dir": str(output),
    }


def _sync_json(checkpoints: CheckpointSync | None, resume_from: Path | None) -> dict | None:
    if checkpoints is None:
        return None
    return {
        "s3": checkpoints.store.settings.model_dump(mode="json"),
        "prefix": checkpoints.prefix,
        "resume_from": str(resume_from) if resume_from else None,
    }


def _launch(processes: int, job_file: Path) -> None:
    """Run torchrun with `processes` processes on `job_file`, its output in the run log; raises
    `TrainingProcessesError` with its exit code and last lines when it fails."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"),
        *("-m", __name__, str(job_file)),
    ]
    # torchrun gives each process 1 thread unless told: on CPUs, share the cores; no progress bars in
    # the run log (anything set in the environment wins)
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    environment = {**CLI_ENVIRONMENT_DEFAULTS, **threads, **os.environ}
    log, tail = run_logger(), deque(maxlen=TAIL_LINES)
    log.info("training on %d processes: %s", processes, " ".join(command[1:]))
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=environment,
        preexec_fn=_stopped_with_parent() if sys.platform == "linux" else None,
    ) as launcher:
        try:
            for line in launcher.stdout:
                if line := line.rstrip():
                    tail.append(line)
                    log.info("%s", line)
            code = launcher.wait()
        finally:
            if launcher.poll() is None:  # the task was interrupted: torchrun stops its processes on SIGTERM
                launcher.terminate()
    if code:
        raise TrainingProcessesError(
            f"fine-tuning on {processes} processes failed: torchrun exited with code {code}; its last "
            f"lines:\n" + "\n".join(tail)
        )


def _stopped_with_parent() -> Callable[[], object]:
    """Linux: what the launcher's process runs before it starts, so that it gets SIGTERM when the
    task's process dies (a killed worker leaves no processes training on its GPUs). Looked up here,
    before the fork: the child, forked from a process with threads, only makes the system call."""
    return functools.partial(ctypes.CDLL(None, use_errno=True).prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


# --- inside each training process -----------------------------------------------------------------


@dataclass(frozen=True)
class _RestoredCheckpoints:
    """`retrainer.core.checkpoints.Checkpoints` in a training process: the task restored them before the
    launch (every process resumes from `latest`), and `sync`, on the first process only, uploads the
    new ones."""

    latest: Path | None
    sync: CheckpointSync | None

    def restore(self, local_dir: Path) -> Path | None:
        return self.latest

    def callback(self) -> TrainerCallback:
        return self.sync.callback() if self.sync else TrainerCallback()


class _ProcessReport(TrainerCallback):
    """Says on every process that it trained, and how far (the run log shows each process's lines)."""

    def on_train_end(self, args, state, control, **kwargs):
        run_logger().info(
            "process %d of %d trained to step %d of %d",
            args.process_index,
            args.world_size,
            state.global_step,
            state.max_steps,
        )


@record  # a failure's traceback reaches torchrun's summary
def main(job_file: str) -> None:
    """One training process: join the process group torchrun set up (NCCL on GPUs, gloo on CPUs),
    then train as the job file says, like every other process."""
    from accelerate import PartialState  # here: the task's own process never joins a group

    # a collective waits up to the Trainer's default ddp_timeout (e.g. for the first process's uploads)
    group = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=30))
    rank = group.process_index
    # every line says which process wrote it (Prefect's handlers, set up on its import, go)
    logging.basicConfig(
        stream=sys.stdout, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("retrainer").setLevel(logging.INFO)
    job, inputs = json.loads(Path(job_file).read_text()), Path(job_file).parent
    spec = TrainingSpec(
        job["base_model"],
        job["revision"],
        TrainingConfig.model_validate(job["config"]),
        warm_start=Path(job["warm_start"]) if job["warm_start"] else None,
        plan=TrainingPlan.model_validate(job["plan"]) if job["plan"] else None,
    )
    callbacks = tuple(_callback_class(path)() for path in job["callbacks"])
    options = RunOptions(
        checkpoints=_rank_checkpoints(job["checkpoints"], rank),
        # one process writes the tokenized cache; the others tokenize in memory (the same tokens)
        tokenized_cache=Path(job["tokenized_cache"]) if job["tokenized_cache"] and rank == 0 else None,
        callbacks=(RunLogCallback(), _ProcessReport(), *callbacks),
    )
    fine_tune(
        pd.read_parquet(inputs / ROWS_FILES["train"]),
        pd.read_parquet(inputs / ROWS_FILES["validation"]),
        spec,
        Path(job["output_dir"]),
        options=options,
        lexical_rows=pd.read_parquet(inputs / ROWS_FILES["lexical"]) if job["lexical_rows"] else None,
    )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _rank_checkpoints(saved: dict | None, rank: int) -> _RestoredCheckpoints | None:
    if saved is None:
        return None
    latest = Path(saved["resume_from"]) if saved["resume_from"] else None
    sync = (
        CheckpointSync(open_store(S3Settings.model_validate(saved["s3"])), saved["prefix"])
        if rank == 0
        else None
    )
    return _RestoredCheckpoints(latest, sync)


def _callback_class(path: str) -> type[TrainerCallback]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    main(sys.argv[1])
