"""Registry: immutable model versions in S3, the production pointer, and the decision history.

``models/<version>/`` is written once (If-None-Match on every file). The pointer
``models/production.json`` is flipped with a compare-and-swap on the ETag the run read, so a run
that lost a race changes nothing, and a crash between upload and flip leaves the champion in place.
Every gate decision is appended to ``models/history/`` (one immutable object per run).
"""

import json
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task

POINTER_NAME = "production.json"
HISTORY_FOLDER = "history/"
METRICS_FILE = "metrics.json"


class ProductionPointer(BaseModel):
    """Which model version serves production, and since when."""

    version: str
    accuracy: float
    dataset_version: str
    promoted_at: datetime
    run_id: str


class DecisionRecord(BaseModel):
    """One run's gate decision, as kept in the history."""

    run_id: str
    decided_at: datetime
    dataset_version: str
    challenger_version: str
    challenger_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None
    promoted: bool
    reasons: list[str]


def pointer_key(store: ObjectStore) -> str:
    """Where the production pointer lives."""
    return store.settings.models_prefix + POINTER_NAME


def version_prefix(store: ObjectStore, version: str) -> str:
    """The folder of one model version."""
    return f"{store.settings.models_prefix}{version}/"


def read_production_pointer(store: ObjectStore) -> tuple[ProductionPointer | None, str | None]:
    """The pointer and its ETag, or (None, None) before the first promotion."""
    found = store.get_if_exists(pointer_key(store))
    if found is None:
        return None, None
    data, etag = found
    return ProductionPointer.model_validate_json(data), etag


def new_version_id() -> str:
    """A sortable, unique model version id, e.g. ``m-20261126T060000Z-3fa2c1``."""
    return f"m-{_utc_stamp()}-{secrets.token_hex(3)}"


def publish_model(store: ObjectStore, model_dir: Path, version: str, metrics: dict) -> str:
    """Upload the model folder plus ``metrics.json`` as ``models/<version>/``; never overwrites."""
    (model_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    prefix = version_prefix(store, version)
    store.upload_dir(model_dir, prefix)
    return prefix


def flip_production_pointer(store: ObjectStore, pointer: ProductionPointer, expected_etag: str | None) -> str:
    """Point production at `pointer.version` if the pointer still has `expected_etag`.

    `expected_etag=None` means "there must be no pointer yet". Raises `PreconditionFailedError` when
    another run changed the pointer first.
    """
    body = pointer.model_dump_json(indent=2).encode()
    if expected_etag is None:
        return store.put(pointer_key(store), body, if_none_match=True, content_type="application/json")
    return store.put(pointer_key(store), body, if_match=expected_etag, content_type="application/json")


def fetch_model(store: ObjectStore, version: str, cache_dir: Path) -> Path:
    """A local copy of model `version`, downloaded once into `cache_dir/<version>` (versions never change)."""
    target = cache_dir / version
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=cache_dir))
    try:
        if store.download_prefix(version_prefix(store, version), staging) == 0:
            raise FileNotFoundError(
                f"model version {version} not found at {store.uri(version_prefix(store, version))}"
            )
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def record_decision(store: ObjectStore, record: DecisionRecord) -> str:
    """Append `record` to the decision history (a new immutable object per run)."""
    key = f"{store.settings.models_prefix}{HISTORY_FOLDER}{_utc_stamp()}-{record.run_id}.json"
    store.put(
        key, record.model_dump_json(indent=2).encode(), if_none_match=True, content_type="application/json"
    )
    return key


def last_decision(store: ObjectStore) -> DecisionRecord | None:
    """The most recent decision in the history, or None when there is none."""
    history = store.list_objects(store.settings.models_prefix + HISTORY_FOLDER)
    if not history:
        return None
    data, _ = store.get(history[-1].key)  # keys start with a UTC stamp: the last is the newest
    return DecisionRecord.model_validate_json(data)


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)  # atomic: a half-downloaded model is never seen as cached
    except OSError:
        if not target.is_dir():  # else another process cached the same version first: fine
            raise


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


read_production_pointer_task = read_task(read_production_pointer, "read-production-pointer")
last_decision_task = read_task(last_decision, "last-decision")
fetch_model_task = read_task(fetch_model, "fetch-model")
publish_model_task = once_task(publish_model, "publish-model")
flip_production_pointer_task = once_task(flip_production_pointer, "flip-production-pointer")
record_decision_task = once_task(record_decision, "record-decision")
