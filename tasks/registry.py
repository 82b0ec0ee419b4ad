"""Registry: immutable model versions in S3, the production pointer, and the decision history.

``models/<version>/`` is written once (If-None-Match on every file). The pointer
``models/production.json`` is flipped with a compare-and-swap on the ETag the run read, so a run
that lost a race changes nothing, and a crash between upload and flip leaves the champion in place.
Every decision (promoted, kept, forced, rolled back, ...) is appended to ``models/history/``.
"""

import json
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from retrainer.core.training_plan import ChampionLineage
from retrainer.records import SMOKE_PASSED, DecisionRecord, ProductionPointer
from retrainer.storage import ObjectStore, PreconditionFailedError
from tasks.common import once_task, read_task

POINTER_NAME = "production.json"
HISTORY_FOLDER = "history/"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"

VersionStatus = Literal["production", "servable", "smoke-failed", "interrupted"]


class RegistryError(ValueError):
    """A registry request that cannot be honoured as asked (the message says why)."""


class NoProductionModelError(RegistryError, LookupError):
    """No model version has been promoted to production yet."""


class UnknownVersionError(RegistryError, FileNotFoundError):
    """No published model version has that id."""


class VersionSummary(BaseModel):
    """One published version, as `retrainer models list` shows it."""

    version: str
    accuracy: float | None
    macro_f1: float | None
    dataset_version: str | None
    in_production: bool
    status: VersionStatus = Field(
        description="production | servable (passed its smoke test) | smoke-failed | interrupted "
        "(published, but its run died before the smoke test decided)"
    )


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
    """A sortable, unique model version id, e.g. ``m-20261126T060000123456Z-3fa2c1``."""
    return f"m-{utc_stamp()}-{secrets.token_hex(3)}"


def publish_model(store: ObjectStore, model_dir: Path, version: str, metadata: dict) -> str:
    """Upload the model folder as ``models/<version>/``, ``metrics.json`` last; never overwrites.

    ``metrics.json`` marks a complete upload: a version without it died mid-upload and is ignored.
    """
    (model_dir / METRICS_FILE).unlink(missing_ok=True)
    prefix = version_prefix(store, version)
    store.upload_dir(model_dir, prefix)
    body = json.dumps(metadata, indent=2, default=str).encode()
    store.put(prefix + METRICS_FILE, body, if_none_match=True, content_type="application/json")
    return prefix


def flip_production_pointer(store: ObjectStore, pointer: ProductionPointer, expected_etag: str | None) -> str:
    """Point production at `pointer.version` if the pointer still has `expected_etag`.

    `expected_etag=None` means "there must be no pointer yet". Raises `PreconditionFailedError`
    when another run changed the pointer first.
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
            raise UnknownVersionError(
                f"model version {version} not found at {store.uri(version_prefix(store, version))}"
            )
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def published_metrics(model_dir: Path) -> dict:
    """The ``metrics.json`` published beside a fetched model's weights (empty when it has none)."""
    path = model_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def trained_on(model_dir: Path) -> set[tuple[str, str]]:
    """The (source key, ETag) of every batch in the curated data a published model was trained on."""
    return {(entry["key"], entry["etag"]) for entry in published_metrics(model_dir).get("lineage") or []}


def champion_lineage(model_dir: Path, version: str) -> ChampionLineage:
    """What the training plan needs to know of a published model (`retrainer.core.training_plan`);
    a model published before plans were recorded counts as fully retrained."""
    metrics = published_metrics(model_dir)
    plan = metrics.get("training_plan") or {}
    return ChampionLineage(
        version, metrics.get("base_model"), metrics.get("base_model_revision"), plan.get("generation", 0)
    )


def fetch_production_model(store: ObjectStore, cache_dir: Path) -> tuple[str, Path]:
    """The production version's id and its local copy (cached by version)."""
    pointer, _ = read_production_pointer(store)
    if pointer is None:
        raise NoProductionModelError(
            f"no model in production yet ({store.uri(pointer_key(store))} does not exist)"
        )
    return pointer.version, fetch_model(store, pointer.version, cache_dir)


def record_decision(store: ObjectStore, record: DecisionRecord) -> str:
    """Append `record` to the decision history (a new immutable object per decision)."""
    key = f"{store.settings.models_prefix}{HISTORY_FOLDER}{utc_stamp()}-{record.run_id}.json"
    body = record.model_dump_json(indent=2).encode()
    store.put(key, body, if_none_match=True, content_type="application/json")
    return key


def read_history(store: ObjectStore) -> list[DecisionRecord]:
    """Every decision, oldest first (history keys start with a UTC stamp)."""
    keys = [info.key for info in store.list_objects(store.settings.models_prefix + HISTORY_FOLDER)]
    return [DecisionRecord.model_validate_json(store.get(key)[0]) for key in keys]


def last_gate_decision(store: ObjectStore) -> DecisionRecord | None:
    """The newest decision a retrain run made (rollbacks are not gate decisions)."""
    history = store.list_objects(store.settings.models_prefix + HISTORY_FOLDER)
    for info in reversed(history):
        record = DecisionRecord.model_validate_json(store.get(info.key)[0])
        if record.action != "rolled-back":
            return record
    return None


def smoke_verdicts(history: list[DecisionRecord]) -> dict[str, VersionStatus]:
    """What the history proves about each version's smoke test: "servable" or "smoke-failed".

    A version the history does not name never got a decision: its run was interrupted after the
    upload. A version that served production (``production_version``/``previous_version``) passed its
    smoke test even if its own record is missing (a crash between flip and record), because the pointer
    only ever moves to a smoke-tested or servable version. A failed smoke test wins over anything else.
    """
    verdicts: dict[str, VersionStatus] = {}
    for record in history:
        for served in (record.production_version, record.previous_version):
            if served:
                verdicts.setdefault(served, "servable")
        if record.challenger_version and record.action in SMOKE_PASSED:
            verdicts.setdefault(record.challenger_version, "servable")
    for record in history:
        if record.challenger_version and record.action == "smoke-failed":
            verdicts[record.challenger_version] = "smoke-failed"
    return verdicts


def version_status(
    version: str, pointer: ProductionPointer | None, verdicts: dict[str, VersionStatus]
) -> VersionStatus:
    """The status `retrainer models list` shows for a published version."""
    if pointer is not None and pointer.version == version:
        return "production"
    return verdicts.get(version, "interrupted")


def list_versions(store: ObjectStore) -> list[VersionSummary]:
    """Every published version with its headline metrics and status, oldest first."""
    pointer, _ = read_production_pointer(store)
    verdicts = smoke_verdicts(read_history(store))  # read once, not per version
    summaries = []
    for folder in store.list_folders(store.settings.models_prefix):
        version = folder[len(store.settings.models_prefix) : -1]
        found = store.get_if_exists(folder + METRICS_FILE)
        if found is None:  # history/ and any upload that died before its metrics landed
            continue
        metadata = json.loads(found[0])
        summaries.append(
            VersionSummary(
                version=version,
                accuracy=metadata.get("accuracy"),
                macro_f1=metadata.get("macro_f1"),
                dataset_version=metadata.get("dataset_version"),
                in_production=pointer is not None and pointer.version == version,
                status=version_status(version, pointer, verdicts),
            )
        )
    return summaries


def rollback(store: ObjectStore, reason: str, to_version: str | None = None) -> ProductionPointer:
    """Point production back at `to_version` (default: the version before the current one).

    The target must be a published version that passed its smoke test (see `smoke_verdicts`). The
    flip is a compare-and-swap, and the rollback is recorded in the history.
    """
    pointer, etag = read_production_pointer(store)
    if pointer is None:
        raise NoProductionModelError("nothing to roll back: no model is in production")
    history = read_history(store)
    target = to_version or pointer.previous_version
    if target is None:
        raise RegistryError(f"no earlier production version than {pointer.version} to roll back to")
    _check_rollback_target(store, history, target, pointer.version)
    metadata = json.loads(store.get(version_prefix(store, target) + METRICS_FILE)[0])
    new_pointer = ProductionPointer(
        version=target,
        accuracy=metadata.get("accuracy"),
        dataset_version=metadata.get("dataset_version"),
        promoted_at=datetime.now(UTC),
        run_id=f"rollback-{secrets.token_hex(4)}",
        action="rolled-back",
        previous_version=_previous_of(history, target),
    )
    try:
        flip_production_pointer(store, new_pointer, etag)
    except PreconditionFailedError as error:
        raise PreconditionFailedError(
            f"production changed while rolling back to {target} (another promotion or rollback won); "
            "nothing was changed: check `retrainer models list` and retry"
        ) from error
    record_decision(store, _rollback_record(new_pointer, pointer.version, reason))
    return new_pointer


def utc_stamp() -> str:
    """Now, as a compact sortable UTC stamp with microseconds."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _previous_of(history: list[DecisionRecord], version: str) -> str | None:
    """What production was before `version` was promoted (following promotions, not rollbacks)."""
    for record in reversed(history):
        if record.production_version == version and record.action in ("promoted", "forced"):
            return record.previous_version
    return None


def _check_rollback_target(
    store: ObjectStore, history: list[DecisionRecord], target: str, current: str
) -> None:
    if target == current:
        raise RegistryError(f"{target} is already in production")
    if not store.get_if_exists(version_prefix(store, target) + WEIGHTS_FILE):
        raise UnknownVersionError(f"{target} is not a published model version")
    verdict = smoke_verdicts(history).get(target)
    if verdict == "smoke-failed":
        raise RegistryError(f"{target} failed its smoke test and may not serve production")
    if verdict != "servable":
        raise RegistryError(
            f"{target} never passed its smoke test (interrupted run): it may not serve production"
        )


def _rollback_record(pointer: ProductionPointer, replaced: str, reason: str) -> DecisionRecord:
    return DecisionRecord(
        run_id=pointer.run_id,
        decided_at=pointer.promoted_at,
        action="rolled-back",
        dataset_version=pointer.dataset_version,
        challenger_version=pointer.version,
        challenger_accuracy=pointer.accuracy,
        production_version=pointer.version,
        previous_version=replaced,
        reasons=[f"rolled back from {replaced} to {pointer.version}: {reason}"],
    )


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)  # atomic: a half-downloaded model is never seen as cached
    except OSError:
        if not target.is_dir():  # else another process cached the same version first: fine
            raise


read_production_pointer_task = read_task(read_production_pointer, "read-production-pointer")
last_gate_decision_task = read_task(last_gate_decision, "last-gate-decision")
read_history_task = read_task(read_history, "read-history")
fetch_model_task = read_task(fetch_model, "fetch-model")
publish_model_task = once_task(publish_model, "publish-model")
flip_production_pointer_task = once_task(flip_production_pointer, "flip-production-pointer")
record_decision_task = once_task(record_decision, "record-decision")
