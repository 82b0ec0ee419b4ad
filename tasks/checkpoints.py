"""Checkpoints in S3, so a fine-tuning run that is killed or retried resumes instead of starting over.

Each checkpoint the Trainer saves is uploaded under a prefix that is fixed for a (dataset version,
base model, training config) triple; ``latest.json``, written after the upload, names the complete
checkpoints. A new run with the same triple downloads them and resumes from the latest.
Checkpoints hold the optimizer and RNG state that only torch can save (pickles): they stay in the
run scratch prefix, never in the model registry, and are read back with torch's weights-only loader.
They exist only for resuming, so a run that has decided deletes them (`discard_scratch`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from retrainer.core.training import checkpoint_step
from retrainer.logs import run_logger
from retrainer.storage import ObjectStore
from tasks.common import read_task

LATEST = "latest.json"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class CheckpointSync:
    """Where one training configuration keeps its checkpoints in S3 (the core's
    `retrainer.core.training.Checkpoints`)."""

    store: ObjectStore
    prefix: str

    def restore(self, local_dir: Path) -> Path | None:
        """Download the saved checkpoints into `local_dir`; the latest one's folder, or None."""
        found = self.store.get_if_exists(self.prefix + LATEST)
        if found is None:
            return None
        latest = json.loads(found[0])
        for name in latest["checkpoints"]:
            self.store.download_prefix(f"{self.prefix}{name}/", local_dir / name)
            _relocate_best_checkpoint(local_dir / name / STATE_FILE, local_dir)
        run_logger().info(
            "resuming from %s (step %d) saved in %s",
            latest["latest"],
            latest["step"],
            self.store.uri(self.prefix),
        )
        return local_dir / latest["latest"]

    def callback(self) -> TrainerCallback:
        """A Trainer callback that uploads every checkpoint as soon as it is saved."""
        return _UploadCheckpoints(self)


class _UploadCheckpoints(TrainerCallback):
    def __init__(self, sync: CheckpointSync) -> None:
        self.sync = sync

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        output = Path(args.output_dir)
        name = f"checkpoint-{state.global_step}"
        self.sync.store.upload_dir(output / name, f"{self.sync.prefix}{name}/", immutable=False)
        kept = sorted((path.name for path in output.glob("checkpoint-*")), key=checkpoint_step)
        marker = {"latest": name, "step": state.global_step, "checkpoints": kept}
        self.sync.store.put(
            self.sync.prefix + LATEST, json.dumps(marker).encode(), content_type="application/json"
        )


def _relocate_best_checkpoint(state_file: Path, local_dir: Path) -> None:
    """Point the saved 'best checkpoint' at its downloaded copy (it held the old machine's path)."""
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if best:
        state["best_model_checkpoint"] = str(local_dir / Path(best).name)
        state_file.write_text(json.dumps(state))


def discard_scratch(store: ObjectStore, prefixes: list[str]) -> int:
    """Delete the run scratch under `prefixes` (only ever below the runs prefix); the bytes freed."""
    freed = 0
    for prefix in prefixes:
        count, size = store.delete_scratch(prefix)
        if count:
            run_logger().info(
                "deleted %d scratch objects (%.1f MB) under %s", count, size / 1e6, store.uri(prefix)
            )
        freed += size
    return freed


discard_scratch_task = read_task(discard_scratch, "discard-run-scratch")
