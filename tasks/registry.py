"""Registry: immutable model versions in S3, the production pointer, and the decision history.

``models/<version>/`` is written once (If-None-Match on every file). The pointer
``models/production.json`` is flipped with a compare-and-swap on the ETag the run read, so a run
that lost a race changes nothing, and a crash between upload and flip leaves the champion in place.
Every decision (promoted, kept, forced, rolled back, ...) is appended to ``models/history/``.

Integrity: ``metrics.json`` records the size and sha256 of every other file of its version (``files``).
Every load (`fetch_model`: the smoke test, a run's champion, `predict`, `score`, a rollback target)
checks the stored sizes against that record (a listing) and the local copy, downloaded or cached, against
the digests; a version that differs raises `CorruptVersionError` and is never served, and a damaged
cached copy is dropped and fetched again. Versions published before digests were recorded are checked
by loading instead: sizes against the listing, every ``.safetensors`` header and every JSON file parsed.
"""

import hashlib
import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from retrainer.core.training_plan import ChampionLineage
from retrainer.records import SMOKE_PASSED, DecisionRecord, ProductionPointer
from retrainer.storage import ObjectStore, PreconditionFailedError, StorageError
from tasks.common import PermanentError, once_task, read_task, run_logger

POINTER_NAME = "production.json"
HISTORY_FOLDER = "history/"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"
FILES_KEY = "files"  # in metrics.json: {relative path: {"size": bytes, "sha256": hex}} of every other file
CORRUPT_REMEDY = "restore the object, or move production to a servable version with `retrainer rollback`"

VersionStatus = Literal["production", "servable", "smoke-failed", "interrupted", "corrupt"]


class RegistryError(ValueError):
    """A registry request that cannot be honoured as asked (the message says why)."""


class NoProductionModelError(RegistryError, LookupError):
    """No model version has been promoted to production yet."""


class UnknownVersionError(RegistryError, FileNotFoundError):
    """No published model version has that id."""


class CorruptVersionError(StorageError, PermanentError):
    """A published version whose stored files differ from what its publish recorded (or, published before
    digests were recorded, do not load). `detail` names the file and what differs."""

    def __init__(self, version: str, detail: str) -> None:
        self.version, self.detail = version, detail
        super().__init__(f"model version {version} is corrupt: {detail}; {CORRUPT_REMEDY}")

    def __reduce__(self):  # picklable with its two arguments (Prefect may keep a failed state's exception)
        return type(self), (self.version, self.detail)


class RecordedFile(BaseModel):
    """One file of a version as its publish recorded it."""

    size: int
    sha256: str


_RECORDED_FILES = TypeAdapter(dict[str, RecordedFile])


@dataclass(frozen=True)
class PublishedVersion:
    """A version as the store holds it: its listed files and what its ``metrics.json`` recorded."""

    version: str
    prefix: str
    listed: dict[str, int]  # relative path -> size, metrics.json included
    metrics: bytes  # the stored metrics.json
    metadata: dict  # ... parsed
    recorded: dict[str, RecordedFile] | None  # None: published before digests were recorded


class VersionSummary(BaseModel):
    """One published version, as `retrainer models list` shows it."""

    version: str
    accuracy: float | None
    macro_f1: float | None
    dataset_version: str | None
    in_production: bool
    status: VersionStatus = Field(
        description="production | servable (passed its smoke test) | smoke-failed | interrupted "
        "(published, but its run died before the smoke test decided) | corrupt (a stored file is missing, "
        "unrecorded or of another size than its publish recorded)"
    )
    problem: str | None = Field(
        None, description="What is wrong with a corrupt version (file and difference)."
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

    ``metrics.json`` marks a complete upload: a version without it died mid-upload and is ignored. It
    records the size and sha256 of every other file (``files``), which every load checks.
    """
    (model_dir / METRICS_FILE).unlink(missing_ok=True)
    files = file_digests(model_dir)  # of the bytes this run means to publish, before they travel
    prefix = version_prefix(store, version)
    store.upload_dir(model_dir, prefix)
    body = json.dumps({**metadata, FILES_KEY: files}, indent=2, default=str).encode()
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


def file_digests(folder: Path) -> dict[str, dict]:
    """The size and sha256 of every file below `folder` but ``metrics.json``, by path relative to it."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in paths
        if path.relative_to(folder).as_posix() != METRICS_FILE
    }


def fetch_model(store: ObjectStore, version: str, cache_dir: Path) -> Path:
    """A verified local copy of model `version` in `cache_dir/<version>`, downloaded once.

    Each call checks the stored files against what the publish recorded (`store_problem`: one listing)
    and the local copy, cached or just downloaded, against the digests (`local_problem`). A version whose
    stored files differ raises `CorruptVersionError` and nothing is cached; a damaged cached copy is
    dropped and fetched again, so a restored object is served once it is back.
    """
    published = read_published(store, version)
    problem = store_problem(store, published)
    if problem:
        raise CorruptVersionError(version, problem)
    target = cache_dir / version
    if target.is_dir():
        problem = local_problem(store, published, target)
        if problem is None:
            return target
        run_logger().warning("cached copy of model %s in %s: %s; fetching it again", version, target, problem)
        _discard(target)
    return _download_verified(store, published, target)


def read_published(
    store: ObjectStore, version: str, listed: dict[str, int] | None = None
) -> PublishedVersion:
    """What the store holds of `version` (`listed`: its files' sizes, when already listed). Raises
    `UnknownVersionError` for no complete version by that id, `CorruptVersionError` for a
    ``metrics.json`` that does not parse."""
    prefix = version_prefix(store, version)
    listed = _listed_files(store, prefix) if listed is None else listed
    if METRICS_FILE not in listed:
        raise UnknownVersionError(
            f"model version {version} not found at {store.uri(prefix)}"
            + (" (its upload never finished: no metrics.json)" if listed else "")
        )
    metrics = store.get(prefix + METRICS_FILE)[0]
    try:
        metadata = json.loads(metrics)
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
        recorded = metadata.get(FILES_KEY)
        recorded = None if recorded is None else _RECORDED_FILES.validate_python(recorded)
    except ValueError as error:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        what = (
            "its files record is unreadable" if isinstance(error, ValidationError) else "it is not valid JSON"
        )
        raise CorruptVersionError(version, f"{store.uri(prefix + METRICS_FILE)}: {what}") from error
    return PublishedVersion(version, prefix, listed, metrics, metadata, recorded)


def store_problem(store: ObjectStore, published: PublishedVersion) -> str | None:
    """How the stored files differ from what the publish recorded (a file missing, of another size, or
    not recorded), from the listing alone; None when they agree or nothing was recorded."""
    recorded, listed = published.recorded, published.listed
    if recorded is None:
        return None
    for name, entry in recorded.items():
        uri = store.uri(published.prefix + name)
        if name not in listed:
            return f"{uri} is missing"
        if listed[name] != entry.size:
            return f"{uri} is {listed[name]:,} bytes, {entry.size:,} recorded at publish"
    unrecorded = sorted(set(listed) - set(recorded) - {METRICS_FILE})
    return (
        f"{store.uri(published.prefix + unrecorded[0])} was not recorded at publish" if unrecorded else None
    )


def local_problem(store: ObjectStore, published: PublishedVersion, folder: Path) -> str | None:
    """How the local copy in `folder` differs from the published version, as "<file> <difference>" (None:
    it is intact): its ``metrics.json`` byte for byte, then every file's size and sha256 against the
    record, or, for a version published before digests were recorded, its sizes against the listing and
    its files loaded."""
    local = {path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}
    metrics = local.pop(METRICS_FILE, None)
    if metrics is None or metrics.read_bytes() != published.metrics:
        return f"{METRICS_FILE} differs from the stored one"
    expected = published.recorded or {
        name: RecordedFile(size=size, sha256="")
        for name, size in published.listed.items()
        if name != METRICS_FILE
    }
    for name in sorted(set(expected) | set(local)):
        problem = _file_problem(local.get(name), expected.get(name))
        if problem:
            return f"{name} {problem}"
    return None


def _file_problem(path: Path | None, entry: RecordedFile | None) -> str | None:
    if entry is None:
        return "was not published"
    if path is None:
        return "is missing"
    size = path.stat().st_size
    if size != entry.size:
        source = "recorded at publish" if entry.sha256 else "in the store"
        return f"is {size:,} bytes, {entry.size:,} {source}"
    if not entry.sha256:  # published before digests were recorded: does it load?
        return _load_problem(path)
    digest = _sha256(path)
    return (
        None
        if digest == entry.sha256
        else f"has sha256 {digest[:12]}…, {entry.sha256[:12]}… recorded at publish"
    )


def _load_problem(path: Path) -> str | None:
    """Why `path` does not load as what its suffix says (safetensors, JSON); None when it does."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open  # reads and checks the header against the file's length

            with safe_open(str(path), framework="numpy"):
                pass
        elif path.suffix == ".json":
            json.loads(path.read_bytes())
    except Exception as error:  # whatever the parser says, it does not load
        return f"does not load: {' '.join(str(error).split()) or type(error).__name__}"
    return None


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _listed_files(store: ObjectStore, prefix: str) -> dict[str, int]:
    """The files under `prefix` by relative path, with their sizes (folder markers left out)."""
    listed = {info.key[len(prefix) :]: info.size for info in store.list_objects(prefix)}
    return {name: size for name, size in listed.items() if name and not name.endswith("/")}


def _download_verified(store: ObjectStore, published: PublishedVersion, target: Path) -> Path:
    """Download the version into a staging folder beside `target`, verify it, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{published.version}-", dir=target.parent))
    try:
        store.download_prefix(published.prefix, staging)
        problem = local_problem(store, published, staging)
        if problem:  # in what the store serves right now
            raise CorruptVersionError(published.version, store.uri(published.prefix) + problem)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _discard(folder: Path) -> None:
    """Remove a cached copy: renamed out of the way first, so no reader sees it half deleted."""
    trash = folder.with_name(f".{folder.name}-damaged-{secrets.token_hex(4)}")
    try:
        folder.rename(trash)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(trash, ignore_errors=True)


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
    """Every published version with its headline metrics and status, oldest first.

    A version whose stored files are missing, unrecorded or of another size than its publish recorded is
    "corrupt" (`store_problem`: from one listing of the registry, nothing downloaded); a same-size change
    of content is found when the version is loaded (`fetch_model`).
    """
    pointer, _ = read_production_pointer(store)
    verdicts = smoke_verdicts(read_history(store))  # read once, not per version
    summaries = []
    for version, listed in _listed_versions(store).items():
        if METRICS_FILE not in listed:  # history/ and any upload that died before its metrics landed
            continue
        try:
            published = read_published(store, version, listed)
            problem, metadata = store_problem(store, published), published.metadata
        except CorruptVersionError as error:
            problem, metadata = error.detail, {}
        summaries.append(
            VersionSummary(
                version=version,
                accuracy=metadata.get("accuracy"),
                macro_f1=metadata.get("macro_f1"),
                dataset_version=metadata.get("dataset_version"),
                in_production=pointer is not None and pointer.version == version,
                status="corrupt" if problem else version_status(version, pointer, verdicts),
                problem=problem,
            )
        )
    return summaries


def _listed_versions(store: ObjectStore) -> dict[str, dict[str, int]]:
    """Every folder under the models prefix, by name, with its files' sizes (one listing of the registry)."""
    prefix = store.settings.models_prefix
    versions: dict[str, dict[str, int]] = {}
    for info in store.list_objects(prefix):
        version, slash, name = info.key[len(prefix) :].partition("/")
        if slash and name:
            versions.setdefault(version, {})[name] = info.size
    return dict(sorted(versions.items()))


def rollback(
    store: ObjectStore, reason: str, to_version: str | None = None, cache_dir: Path | None = None
) -> ProductionPointer:
    """Point production back at `to_version` (default: the version before the current one).

    The target must be a published version that passed its smoke test (see `smoke_verdicts`) and whose
    files are intact: it is fetched and verified into `cache_dir` (default: a temporary folder) first. The
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
    _check_intact(store, target, cache_dir)
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


def _check_intact(store: ObjectStore, version: str, cache_dir: Path | None) -> None:
    """Refuse a target whose files differ from their record (a full fetch and check: it is about to serve)."""
    with tempfile.TemporaryDirectory(prefix="rollback-") as scratch:
        try:
            fetch_model(store, version, cache_dir or Path(scratch))
        except CorruptVersionError as error:
            raise RegistryError(
                f"{version} is corrupt and may not serve production: {error.detail}"
            ) from error


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
