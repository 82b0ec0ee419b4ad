"""Curate: merge validated rows into the curated dataset, split it deterministically, store it in parts.

Each ticket's split is decided once, by a hash of its ``ticket_id``, and then kept: a ticket in the
gate's eval set never moves into training, even if the fractions change later.

What a run writes is in proportion to what is new. A dataset version is one small immutable file,
``datasets/<version>/version.json``, listing its *parts* in order; a part is an immutable Parquet object
``datasets/parts/<stamp>-<sha256>.parquet`` of curated rows with their ``split``. A run that ingests
writes one part, holding its new rows, and a version file listing the previous version's parts and the
new one. Reading a version reads its parts in order and keeps the last row of each ``ticket_id`` (a
re-sent ticket's newer row wins; its split was kept when it was curated: `with_splits`). So that a
version keeps few parts, the new part absorbs the newest parts while it holds at least as many rows as
the next one back (`parts_to_merge`). Parts are shared between versions, so they are never tagged
superseded: `delete_unreferenced_parts` deletes those no version file lists any more. A version written
before parts (all its rows in ``datasets/<version>/curated.parquet``) reads as its one part, and the next
version's new part absorbs it.
"""

import contextlib
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from retrainer.core.batch_files.ticket_ids import TICKET_ID
from retrainer.core.training_plan import unseen_mask
from retrainer.id_index import ANY_CONTENT, record_holdings
from retrainer.retention import SUPERSEDED_TAG
from retrainer.storage import ObjectInfo, ObjectStore, PreconditionFailedError, StorageError
from tasks.common import PermanentError, once_task, read_task

TRAIN, VALIDATION, EVAL = "train", "validation", "eval"
SPLITS = (TRAIN, VALIDATION, EVAL)
VERSION_FILE = "version.json"
LEGACY_FILE = "curated.parquet"  # a version written before parts: all its rows in one object
PARTS_FOLDER = "parts/"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class DatasetObjectError(StorageError, PermanentError):
    """A dataset version file that cannot be read, or a part a version lists that is gone or altered:
    asking again cannot mend it; the message names the object and the remedy."""


class MissingDatasetPartError(DatasetObjectError, KeyError):
    """A part a dataset version lists is gone (a `KeyError` too: callers that expect one still get it)."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""


_RESTORE = "restore it from the bucket's versioning or a backup"


class DatasetPart(BaseModel):
    """One immutable Parquet object of curated rows (with their ``split``), as a version lists it."""

    key: str
    rows: int = Field(description="rows stored; 0 for a version written before parts (not counted)")
    splits: dict[str, int] = Field(default_factory=dict, description="rows stored per split")
    sha256: str = Field("", description="of the object's bytes; empty for a version written before parts")
    added_by: str | None = Field(None, description="the dataset version that wrote it")


class DatasetVersion(BaseModel):
    """A dataset version's file: its parts in order (a later part's row of a ticket wins); never changed.
    `rows` and `splits` count stored rows: a re-sent ticket counts in each part holding it."""

    version: str
    previous: str | None = None
    written_at: datetime
    parts: list[DatasetPart]
    rows: int
    splits: dict[str, int]


def assign_split(ticket_id: str, eval_fraction: float, validation_fraction: float) -> str:
    """``eval`` (the gate's held-out set), ``validation`` (epoch selection) or ``train``."""
    digest = hashlib.sha256(ticket_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < eval_fraction:
        return EVAL
    if position < eval_fraction + validation_fraction:
        return VALIDATION
    return TRAIN


def with_splits(
    curated: pd.DataFrame | None, new_rows: pd.DataFrame, eval_fraction: float, validation_fraction: float
) -> pd.DataFrame:
    """`new_rows` with their ``split``: a ticket already in `curated` keeps its split, a new one gets
    `assign_split`'s."""
    previous = {} if curated is None else dict(zip(curated["ticket_id"], curated["split"], strict=True))
    splits = [
        previous.get(ticket_id) or assign_split(ticket_id, eval_fraction, validation_fraction)
        for ticket_id in new_rows["ticket_id"]
    ]
    return new_rows.assign(split=splits)


def latest_rows(frames: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """`frames` in order as one frame with the last row of each ``ticket_id`` (None when all are None)."""
    present = [frame for frame in frames if frame is not None]
    if not present:
        return None
    nonempty = [frame for frame in present if len(frame)] or present[:1]
    combined = pd.concat(nonempty, ignore_index=True)
    return combined.drop_duplicates("ticket_id", keep="last").reset_index(drop=True)


# --- reading ------------------------------------------------------------------------------------------


def version_key(store: ObjectStore, dataset_version: str) -> str:
    """The file that is a dataset version: the list of its parts."""
    return f"{store.settings.datasets_prefix}{dataset_version}/{VERSION_FILE}"


def legacy_key(store: ObjectStore, dataset_version: str) -> str:
    """Where a version written before parts keeps all its rows."""
    return f"{store.settings.datasets_prefix}{dataset_version}/{LEGACY_FILE}"


def parts_prefix(store: ObjectStore) -> str:
    """Where the parts of every version live."""
    return store.settings.datasets_prefix + PARTS_FOLDER


def version_parts(store: ObjectStore, dataset_version: str) -> list[DatasetPart]:
    """The parts of `dataset_version`, oldest first. A version written before parts is its one object
    (its rows not counted: 0), which raises `KeyError` when read if that version does not exist."""
    found = store.get_if_exists(version_key(store, dataset_version))
    if found is not None:
        return _version_file(store, dataset_version, found[0]).parts
    return [DatasetPart(key=legacy_key(store, dataset_version), rows=0, added_by=dataset_version)]


def _version_file(store: ObjectStore, dataset_version: str, data: bytes) -> DatasetVersion:
    """The version file's contents; `DatasetObjectError`, naming it, when it is truncated or altered."""
    try:
        return DatasetVersion.model_validate_json(data)
    except ValidationError as error:
        problem = error.errors(include_url=False, include_input=False)[0]["msg"]
        raise DatasetObjectError(
            f"{store.uri(version_key(store, dataset_version))}, the file of dataset version "
            f"{dataset_version}, cannot be read ({problem}): {_RESTORE}"
        ) from error


def read_part(store: ObjectStore, part: DatasetPart) -> pd.DataFrame:
    """The rows of one part. Raises `MissingDatasetPartError` (a `KeyError`) when it is gone,
    `DatasetObjectError` when its bytes are not the ones its version lists; both name the part."""
    try:
        data, _ = store.get(part.key)
    except KeyError:
        raise MissingDatasetPartError(f"dataset part {store.uri(part.key)} is gone: {_RESTORE}") from None
    if part.sha256 and hashlib.sha256(data).hexdigest() != part.sha256:
        raise DatasetObjectError(f"{store.uri(part.key)} is not the part its version lists (SHA-256 differs)")
    return pd.read_parquet(io.BytesIO(data))


def read_curated(store: ObjectStore, dataset_version: str | None) -> pd.DataFrame | None:
    """The curated dataset at `dataset_version` (its parts, the last row of each ticket), or None before
    the first one. Raises `KeyError` when the version or one of its parts is gone."""
    if dataset_version is None:
        return None
    return latest_rows([read_part(store, part) for part in version_parts(store, dataset_version)])


# --- writing ------------------------------------------------------------------------------------------


def write_curated(store: ObjectStore, new_rows: pd.DataFrame, previous: str | None = None) -> str:
    """Store `new_rows` (curated rows with their ``split``: `with_splits`) as a new dataset version on top
    of `previous`; return its id. Writes one part, holding the new rows and the newest parts they absorb
    (`parts_to_merge`), and the version file; older parts are listed again, not rewritten."""
    if "split" not in new_rows.columns:
        raise ValueError("curated rows need their split (tasks.dataset.with_splits) before they are written")
    parts = version_parts(store, previous) if previous else []
    kept = len(parts) - parts_to_merge(parts, len(new_rows))
    absorbed = [read_part(store, part) for part in parts[kept:]]
    part = write_part(store, latest_rows([*absorbed, new_rows]))
    return write_version(store, [*parts[:kept], part], previous)


def parts_to_merge(parts: list[DatasetPart], new_rows: int) -> int:
    """How many of the newest `parts` a new part of `new_rows` rows absorbs: while the rows gathered are at
    least as many as the next part's back, that part joins. Parts then shrink from oldest to newest, so a
    version keeps about log2(rows / batch) parts, and a row is rewritten about as often over its life.
    A version written before parts (rows not counted: 0) is always absorbed."""
    count, rows = 0, new_rows
    while count < len(parts) and rows >= parts[-1 - count].rows:
        rows += parts[-1 - count].rows
        count += 1
    return count


def write_part(store: ObjectStore, rows: pd.DataFrame) -> DatasetPart:
    """Store `rows` as an immutable part. Its key names when and what (a run retried within the second
    writes the very same bytes, so an existing key is taken as written)."""
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    key = f"{parts_prefix(store)}{_now():{STAMP_FORMAT}}-{digest[:16]}.parquet"
    record_holdings(store, {(key, ANY_CONTENT): rows[TICKET_ID]})  # before the part (retrainer.id_index)
    with contextlib.suppress(PreconditionFailedError):
        store.put(key, body, if_none_match=True)
    counts = rows["split"].value_counts()
    splits = {split: int(counts.get(split, 0)) for split in SPLITS}
    return DatasetPart(key=key, rows=len(rows), splits=splits, sha256=digest)


def write_version(store: ObjectStore, parts: list[DatasetPart], previous: str | None) -> str:
    """Store the file of a new dataset version listing `parts` in order, and return its id, which names
    when and a hash of what it lists (a retry within the second writes the very same file)."""
    if any(not part.sha256 for part in parts):
        raise ValueError("a version written before parts is absorbed into a new part, never listed as one")
    listing = json.dumps([previous, [[part.key, part.sha256] for part in parts]])
    written_at = _now()
    version = f"ds-{written_at:{STAMP_FORMAT}}-{hashlib.sha256(listing.encode()).hexdigest()[:10]}"
    parts = [part if part.added_by else part.model_copy(update={"added_by": version}) for part in parts]
    record = DatasetVersion(
        version=version,
        previous=previous,
        written_at=written_at,
        parts=parts,
        rows=sum(part.rows for part in parts),
        splits={split: sum(part.splits.get(split, 0) for part in parts) for split in SPLITS},
    )
    body = record.model_dump_json(indent=2).encode()
    with contextlib.suppress(PreconditionFailedError):
        store.put(version_key(store, version), body, if_none_match=True, content_type="application/json")
    return version


def discard_uncommitted(
    store: ObjectStore, version: str | None, current: str | None, other_keys: list[str] = ()
) -> list[str]:
    """Delete what a run wrote for a manifest commit that lost (another run or an erasure committed
    first): its dataset `version` (the file, then the parts it added, so none is left listing a deleted
    part) and `other_keys` (its quarantine writes); the next run ingests those batches again. Nothing of
    the version goes when the manifest names it (`current`: the same version, written by a run that read
    the same manifest in the same second) or its version lists the part. Best effort, idempotent; returns
    the keys deleted. Safe: no later manifest can name it, since each builds on the one it read."""
    keys = list(other_keys)
    if version is not None and version != current:
        kept = set() if current is None else {part.key for part in version_parts(store, current)}
        added = [part.key for part in version_parts(store, version) if part.added_by == version]
        folder = [info.key for info in store.list_objects(f"{store.settings.datasets_prefix}{version}/")]
        keys += folder + [key for key in added if key not in kept]
    store.delete_many(keys)
    return keys


def _now() -> datetime:
    """The time stamped on parts and versions, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


# --- retention ----------------------------------------------------------------------------------------


def mark_superseded(store: ObjectStore, dataset_version: str) -> None:
    """Tag a version that a later one replaced (its version file, or the ``curated.parquet`` of a version
    written before parts), so the retention rule expires it; the current version is never tagged
    (`retrainer.retention`), nor are parts, which later versions share. Idempotent."""
    for info in store.list_objects(f"{store.settings.datasets_prefix}{dataset_version}/"):
        store.tag(info.key, *SUPERSEDED_TAG)


def dataset_versions(store: ObjectStore) -> list[str]:
    """Every dataset version in the bucket (the names of its folders under ``datasets/``), sorted."""
    prefix, parts = store.settings.datasets_prefix, parts_prefix(store)
    return [folder[len(prefix) : -1] for folder in store.list_folders(prefix) if folder != parts]


def unreferenced_parts(store: ObjectStore, written_before: datetime) -> list[ObjectInfo]:
    """The parts written before `written_before` that no version file in the bucket lists.

    Parts are listed before version files are read: a version that lists an older part was written
    while the version it copied the list from was current, and that one is still there (the current
    version never expires). A run writes its part just before its version file: the age keeps it."""
    parts = store.list_objects(parts_prefix(store))
    candidates = [info for info in parts if _older(info.key, written_before)]
    listed = set()
    for version in dataset_versions(store):
        found = store.get_if_exists(version_key(store, version))
        if found is not None:
            listed |= {part.key for part in _version_file(store, version, found[0]).parts}
    return [info for info in candidates if info.key not in listed]


def delete_unreferenced_parts(
    store: ObjectStore, min_age: timedelta = timedelta(days=1), dry_run: bool = False
) -> list[ObjectInfo]:
    """Delete the parts that no version lists any more (absorbed into a newer part, or rewritten by an
    erasure, and the versions listing them expired; or written by a run that failed) and that are older
    than `min_age`, so that a part whose run is writing its version file is kept. Returns them."""
    unreferenced = unreferenced_parts(store, _now() - min_age)
    if not dry_run:
        store.delete_many([info.key for info in unreferenced])
    return unreferenced


def _older(key: str, moment: datetime) -> bool:
    """Whether the part `key` was written before `moment`, by its name (an object named otherwise is
    not a part this module wrote: never)."""
    try:
        written_at = datetime.strptime(key.rsplit("/", 1)[-1][:16], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return False
    return written_at < moment


def split_rows(curated: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split."""
    return curated[curated["split"] == split].reset_index(drop=True)


read_curated_task = read_task(read_curated, "read-curated")
write_curated_task = once_task(write_curated, "write-curated")
mark_superseded_task = read_task(mark_superseded, "mark-superseded")  # idempotent: retried like a read
discard_uncommitted_task = read_task(discard_uncommitted, "discard-uncommitted")  # idempotent too


def check_splits(curated: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each split's rows; raises ValueError when a split is empty (too little data to train and gate)."""
    splits = {name: split_rows(curated, name) for name in (TRAIN, VALIDATION, EVAL)}
    empty = [name for name, rows in splits.items() if rows.empty]
    if empty:
        counts = ", ".join(f"{name}={len(rows)}" for name, rows in splits.items())
        raise ValueError(
            f"curated dataset has empty split(s) {', '.join(empty)} ({counts}): send more tickets"
        )
    return splits


def rows_from_sources(rows: pd.DataFrame, sources: set[tuple[str, str]]) -> list[bool]:
    """For each row, whether it came from one of `sources` (source key, ETag): e.g. this run's batches."""
    return (~unseen_mask(rows, sources)).tolist()


def lineage(curated: pd.DataFrame) -> list[dict[str, str | int]]:
    """The source objects (key, ETag, rows) a curated dataset was built from."""
    counts = curated.groupby(["source_key", "source_etag"]).size()
    return [{"key": key, "etag": etag, "rows": int(rows)} for (key, etag), rows in counts.items()]
