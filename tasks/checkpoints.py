"""Checkpoints in S3, so a fine-tuning run that is killed or retried resumes instead of starting over.

Each checkpoint the Trainer saves is uploaded under a prefix that is fixed for a (dataset version,
base model, training config) triple; ``latest.json``, written after the upload, names the complete
checkpoints. A new run with the same triple downloads them and resumes from the latest.
Checkpoints hold the optimizer and RNG state that only torch can save (pickles): they stay in the
run scratch prefix, never in the model registry, and are read back with torch's weights-only loader.
They exist only for resuming, so a run that has decided deletes them (`discard_scratch`).
"""

import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from retrainer.core.checkpoints import checkpoint_step
from retrainer.storage import ObjectStore
from tasks.common import read_task, run_logger

LATEST = "latest.json"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class CheckpointSync:
    """Where one training configuration keeps its checkpoints in S3 (the core's
    `retrainer.core.checkpoints.Checkpoints`)."""

    store: ObjectStore
    prefix: str
    _uploaders: list["_UploadCheckpoints"] = field(default_factory=list, compare=False, repr=False)

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
        """A Trainer callback that uploads every checkpoint in the background as soon as it is saved."""
        uploader = _UploadCheckpoints(self)
        self._uploaders.append(uploader)
        return uploader

    def wait_for_uploads(self) -> None:
        """Block until every checkpoint handed over so far is in S3 (raises a failed upload's error)."""
        for uploader in self._uploaders:
            uploader.wait()


class _UploadCheckpoints(TrainerCallback):
    """Uploads each checkpoint on one background thread, in the order saved, while training goes on
    (on a GPU an epoch can take less time than uploading its checkpoint). ``latest.json`` names a
    checkpoint only once it is complete in S3. A failed upload fails the training at its next save or
    at its end, which also waits for the last upload."""

    def __init__(self, sync: CheckpointSync) -> None:
        self.sync = sync
        self.uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self.uploads: list[Future] = []

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._raise_failed_upload()
        output = Path(args.output_dir)
        name = f"checkpoint-{state.global_step}"
        kept = sorted((path.name for path in output.glob("checkpoint-*")), key=checkpoint_step)
        marker = {"latest": name, "step": state.global_step, "checkpoints": kept}
        staged = _link_copy(output / name, output / UPLOADING / name)
        self.uploads.append(self.uploader.submit(self._upload, staged, name, marker))

    def on_train_end(self, args, state, control, **kwargs):
        try:
            self.wait()
        finally:
            self.uploader.shutdown(wait=True)

    def wait(self) -> None:
        for upload in self.uploads:
            upload.result()

    def _upload(self, staged: Path, name: str, marker: dict) -> None:
        try:
            self.sync.store.upload_dir(staged, f"{self.sync.prefix}{name}/", immutable=False)
            self.sync.store.put(
                self.sync.prefix + LATEST, json.dumps(marker).encode(), content_type="application/json"
            )
            run_logger().info("%s kept in %s", name, self.sync.store.uri(f"{self.sync.prefix}{name}/"))
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _raise_failed_upload(self) -> None:
        for upload in self.uploads:
            if upload.done():
                upload.result()  # raises the upload's error


UPLOADING = ".uploading"
"""Beside the checkpoints: hard-linked copies waiting for upload (the Trainer may delete a checkpoint
folder, keeping only the last few, before its upload is done)."""


def _link_copy(folder: Path, target: Path) -> Path:
    """`target`, a copy of `folder` made of hard links (no bytes copied) where the file system allows."""
    shutil.copytree(folder, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    return target


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


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
