"""Registry test helpers: stand-in model versions and promotions, written through the real registry API."""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from retrainer.core.labels import LABELS
from retrainer.records import DecisionRecord, ProductionPointer
from retrainer.storage import ObjectStore
from tasks.registry import (
    flip_production_pointer,
    publish_model,
    read_production_pointer,
    record_decision,
)


def publish_fake_version(store: ObjectStore, tmp_path: Path, version: str, accuracy: float = 0.8) -> None:
    """Publish `version` as a complete registry folder whose weights file holds its own name."""
    model_dir = tmp_path / version
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(version.encode())
    publish_model(
        store, model_dir, version, {"accuracy": accuracy, "macro_f1": accuracy, "dataset_version": "ds"}
    )


def labelled_copy(tiny_model_dir: Path, target: Path) -> Path:
    """The tiny random BERT, named with the project's labels as a trained model is (loaders check)."""
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = dict(enumerate(LABELS))
    config["label2id"] = {label: index for index, label in enumerate(LABELS)}
    (target / "config.json").write_text(json.dumps(config))
    return target


def damage(store: ObjectStore, key: str, how: str) -> bytes:
    """Overwrite the stored object `key` truncated to half (`how="truncate"`) or with its last byte flipped
    (`how="flip"`, same size); returns the original bytes, to restore it with `store.put`."""
    original, _ = store.get(key)
    damaged = (
        original[: len(original) // 2] if how == "truncate" else original[:-1] + bytes([original[-1] ^ 1])
    )
    store.put(key, damaged)
    return original


def pointer_to(version: str, previous: str | None = None) -> ProductionPointer:
    """A production pointer at `version`, promoted over `previous`."""
    return ProductionPointer(
        version=version,
        accuracy=0.9,
        dataset_version="ds",
        promoted_at=datetime.now(UTC),
        run_id=f"run-{version}",
        previous_version=previous,
    )


def decision(
    action: str, candidate: str, production: str | None = None, previous: str | None = None
) -> DecisionRecord:
    """A history record of `action` on `candidate`."""
    return DecisionRecord(
        run_id=f"run-{candidate}",
        decided_at=datetime.now(UTC),
        action=action,
        dataset_version="ds",
        challenger_version=candidate,
        production_version=production,
        previous_version=previous,
        reasons=["test"],
    )


def promote(
    store: ObjectStore, version: str, previous: str | None, action: str = "promoted", *, record: bool = True
) -> None:
    """What a retrain run does after a passed smoke test: flip the pointer (compare-and-swap on the ETag
    read now), then record the decision (`record=False`: the run crashed in between)."""
    flip_production_pointer(store, pointer_to(version, previous), read_production_pointer(store)[1])
    if record:
        record_decision(store, decision(action, version, production=version, previous=previous))
