"""Curate: merge validated rows into the curated dataset and split it deterministically.

Each ticket's split is decided once, by a hash of its ``ticket_id``, and then kept: a ticket in the
gate's eval set never moves into training, even if the fractions change later. Every curated
dataset version is a new immutable object (``datasets/<version>/curated.parquet``).
"""

import contextlib
import hashlib
import io
from datetime import UTC, datetime

import pandas as pd

from retrainer.retention import SUPERSEDED_TAG
from retrainer.storage import ObjectStore, PreconditionFailedError
from tasks.common import once_task, read_task

TRAIN, VALIDATION, EVAL = "train", "validation", "eval"
CURATED_FILE = "curated.parquet"


def assign_split(ticket_id: str, eval_fraction: float, validation_fraction: float) -> str:
    """``eval`` (the gate's held-out set), ``validation`` (epoch selection) or ``train``."""
    digest = hashlib.sha256(ticket_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < eval_fraction:
        return EVAL
    if position < eval_fraction + validation_fraction:
        return VALIDATION
    return TRAIN


def merge_curated(
    curated: pd.DataFrame | None, new_rows: pd.DataFrame, eval_fraction: float, validation_fraction: float
) -> pd.DataFrame:
    """Curated rows plus `new_rows`; a re-sent ``ticket_id`` updates the row but keeps its split."""
    previous_split = {} if curated is None else dict(zip(curated["ticket_id"], curated["split"], strict=True))
    combined = pd.concat([frame for frame in (curated, new_rows) if frame is not None], ignore_index=True)
    combined = combined.drop_duplicates("ticket_id", keep="last").reset_index(drop=True)
    combined["split"] = [
        previous_split.get(ticket_id) or assign_split(ticket_id, eval_fraction, validation_fraction)
        for ticket_id in combined["ticket_id"]
    ]
    return combined


def read_curated(store: ObjectStore, dataset_version: str | None) -> pd.DataFrame | None:
    """The curated dataset at `dataset_version`, or None before the first one."""
    if dataset_version is None:
        return None
    data, _ = store.get(curated_key(store, dataset_version))
    return pd.read_parquet(io.BytesIO(data))


def write_curated(store: ObjectStore, curated: pd.DataFrame) -> str:
    """Store `curated` as a new immutable dataset version and return the version id."""
    buffer = io.BytesIO()
    curated.to_parquet(buffer, index=False)
    body = buffer.getvalue()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    version = f"ds-{stamp}-{hashlib.sha256(body).hexdigest()[:10]}"
    # The key names its content's hash: a run retried within the second has written these very bytes.
    with contextlib.suppress(PreconditionFailedError):
        store.put(curated_key(store, version), body, if_none_match=True)
    return version


def curated_key(store: ObjectStore, dataset_version: str) -> str:
    """Where one curated dataset version lives."""
    return f"{store.settings.datasets_prefix}{dataset_version}/{CURATED_FILE}"


def mark_superseded(store: ObjectStore, dataset_version: str) -> None:
    """Tag a curated version that a later one replaced, so the retention rule expires it (the current
    version is never tagged: `retrainer.retention`). Idempotent."""
    store.tag(curated_key(store, dataset_version), *SUPERSEDED_TAG)


def split_rows(curated: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split."""
    return curated[curated["split"] == split].reset_index(drop=True)


read_curated_task = read_task(read_curated, "read-curated")
write_curated_task = once_task(write_curated, "write-curated")
mark_superseded_task = read_task(mark_superseded, "mark-superseded")  # idempotent: retried like a read


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
    return [(key, etag) in sources for key, etag in zip(rows["source_key"], rows["source_etag"], strict=True)]


def lineage(curated: pd.DataFrame) -> list[dict[str, str | int]]:
    """The source objects (key, ETag, rows) a curated dataset was built from."""
    counts = curated.groupby(["source_key", "source_etag"]).size()
    return [{"key": key, "etag": etag, "rows": int(rows)} for (key, etag), rows in counts.items()]
