"""Ingest: find batch files in ``incoming/`` that the manifest has not seen, and load them.

The manifest (`tasks.manifest`) records, per object key, the ETag that was ingested, so an object
rewritten with new content is a new batch, and an unchanged one is never read twice.

Batch files are CSV, JSON Lines or Parquet, each optionally gzip-compressed (``.csv.gz`` ...); how each
is read is `retrainer.core.batch_files`. A file that cannot be read becomes a `LoadedBatch` with an
``error`` (quarantined whole); a JSON Lines file with some broken lines keeps the good lines and marks
the broken ones (``_parse_error``).
"""

from concurrent.futures import ThreadPoolExecutor

from retrainer.core.batch_files import LoadedBatch
from retrainer.core.batch_files.formats import parsed_batch
from retrainer.settings import IngestSettings
from retrainer.storage import InvalidKeyError, ObjectInfo, ObjectStore
from tasks.common import read_task
from tasks.manifest import Manifest


def discover_new_batches(store: ObjectStore, manifest: Manifest) -> list[ObjectInfo]:
    """Objects under ``incoming/`` whose key+ETag the manifest has not recorded, oldest key first."""
    candidates = store.list_objects(store.settings.incoming_prefix)
    return [
        info
        for info in candidates
        if not info.key.endswith("/") and _recorded_etag(manifest, shown_key(info.key)) != info.etag
    ]


def shown_key(key: str) -> str:
    """`key` as the manifest, lineage and messages name it: itself, or for a name that is not valid
    UTF-8 (a file name with stray bytes in the folder store), the name with those bytes as ``\\x..``."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        try:
            return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name byte decodes to
            return key.encode("utf-8", "backslashreplace").decode("utf-8")


def load_batch(store: ObjectStore, info: ObjectInfo, settings: IngestSettings) -> LoadedBatch:
    """Read one batch object and parse it; a file that cannot be parsed carries its error instead, and so
    does an object whose name cannot be read (it is quarantined and alerted alone, never retried: the
    other batches go on)."""
    key = shown_key(info.key)
    if key != info.key:
        return _unread(info, key, "the object's name is not valid UTF-8 (shown with \\x escapes); rename it")
    if info.size > settings.max_object_bytes:
        return _unread(
            info, key, f"object is {info.size} bytes, over the limit of {settings.max_object_bytes}"
        )
    try:
        raw, etag = store.get(info.key)
    except InvalidKeyError as error:  # a name this store cannot hold: asking again cannot help
        return _unread(info, key, f"{error}; rename the object")
    return parsed_batch(info.key, etag, raw, settings)


def _unread(info: ObjectInfo, key: str, reason: str) -> LoadedBatch:
    return LoadedBatch(key=key, etag=info.etag, raw=b"", frame=None, error=f"{key}: {reason}")


def load_batches(store: ObjectStore, infos: list[ObjectInfo], settings: IngestSettings) -> list[LoadedBatch]:
    """Load many batch objects concurrently (downloads overlap; order is kept)."""
    if len(infos) <= 1:
        return [load_batch(store, info, settings) for info in infos]
    with ThreadPoolExecutor(max_workers=min(settings.max_concurrency, len(infos))) as pool:
        return list(pool.map(lambda info: load_batch(store, info, settings), infos))


def _recorded_etag(manifest: Manifest, key: str) -> str | None:
    entry = manifest.objects.get(key)
    return entry.etag if entry else None


# Prefect wrappers: retries on reads, which are idempotent.
discover_new_batches_task = read_task(discover_new_batches, "discover-new-batches")
load_batches_task = read_task(load_batches, "load-batches")
