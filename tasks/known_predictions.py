"""The registry's store of each published version's predictions (`retrainer.core.known_predictions`):
``<predictions_prefix><version>/<run_id>.parquet``, one part per run that scored the version, written once
(If-None-Match) and never changed except by an erasure, which rewrites the parts holding an erased id."""

import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from retrainer.core.known_predictions import COLUMNS, KnownPredictions, predict_reusing
from retrainer.storage import ObjectStore
from tasks.common import once_task, read_task
from tasks.dataset import EVAL, check_splits, read_curated

PARQUET = "application/vnd.apache.parquet"


def predictions_prefix(store: ObjectStore, version: str) -> str:
    """Where `version`'s parts are."""
    return f"{store.settings.predictions_prefix}{version}/"


def read_known_predictions(store: ObjectStore, version: str) -> KnownPredictions:
    """Every stored prediction of `version` (none yet: empty)."""
    keys = sorted(info.key for info in store.list_objects(predictions_prefix(store, version)))
    found = [store.get_if_exists(key) for key in keys]  # one pruned meanwhile is scored again
    return KnownPredictions.from_frames([pd.read_parquet(io.BytesIO(raw[0])) for raw in found if raw])


def record_predictions(store: ObjectStore, version: str, run_id: str, part: pd.DataFrame) -> str | None:
    """Store `part` (`COLUMNS`) as `version`'s predictions from run `run_id`; None when it is empty."""
    if part.empty:
        return None
    key = f"{predictions_prefix(store, version)}{run_id}.parquet"
    store.put(key, _parquet(part), if_none_match=True, content_type=PARQUET)
    return key


def record_eval_predictions(
    store: ObjectStore, model_dir: Path, dataset_version: str, key: str, max_length: int
) -> int:
    """Score the eval split of `dataset_version` with the model in `model_dir` where it was trained (the
    gpu pool) and store the predictions at `key` (run scratch: a retried fine-tune overwrites it); the
    tickets scored. The retrain run reads them back instead of scoring the challenger on its cpu worker."""
    eval_rows = check_splits(read_curated(store, dataset_version))[EVAL]
    predicted = predict_reusing(model_dir, eval_rows["text"].tolist(), max_length, KnownPredictions())
    store.put(key, _parquet(predicted.new_part(eval_rows["ticket_id"].tolist())), content_type=PARQUET)
    return len(eval_rows)


def read_predictions_at(store: ObjectStore, key: str) -> KnownPredictions:
    """The predictions stored at `key` (none there: empty)."""
    found = store.get_if_exists(key)
    return KnownPredictions.from_frames([pd.read_parquet(io.BytesIO(found[0]))] if found else [])


def erase_from_predictions(store: ObjectStore, ticket_ids: list[str]) -> list[str]:
    """Rewrite every stored part holding one of `ticket_ids` without their rows (If-Match, redone when
    rewritten meanwhile); the keys rewritten. Idempotent."""
    ids = set(ticket_ids)

    def without_ids(raw: bytes) -> bytes | None:
        part = pd.read_parquet(io.BytesIO(raw))
        erased = part["ticket_id"].isin(ids)
        return _parquet(part[~erased]) if erased.any() else None

    keys = [info.key for info in store.list_objects(store.settings.predictions_prefix)]
    return [key for key in keys if store.rewrite(key, without_ids, content_type=PARQUET)]


def prune_predictions(store: ObjectStore, keep: Iterable[str | None]) -> list[str]:
    """Delete the stored predictions of every version but `keep` (the new production version and the one
    it replaced, the rollback target): only a champion's predictions are ever reused, and an erasure reads
    every part left. A version rolled back to later is scored again in full, once. The keys deleted."""
    kept = tuple(predictions_prefix(store, version) for version in keep if version)
    listed = store.list_objects(store.settings.predictions_prefix)
    keys = [info.key for info in listed if not info.key.startswith(kept)]
    store.delete_many(keys)
    return keys


def _parquet(part: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    part[list(COLUMNS)].to_parquet(buffer, index=False)
    return buffer.getvalue()


read_known_predictions_task = read_task(read_known_predictions, "read-known-predictions")
record_predictions_task = once_task(record_predictions, "record-predictions")
erase_from_predictions_task = once_task(erase_from_predictions, "erase-from-predictions")
record_eval_predictions_task = read_task(record_eval_predictions, "record-eval-predictions")  # overwrites
read_predictions_at_task = read_task(read_predictions_at, "read-predictions-at")
prune_predictions_task = read_task(prune_predictions, "prune-predictions")  # deleting converges
