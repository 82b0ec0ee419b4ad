"""The store contract: what every object store of the product keeps, and the errors and values it speaks in.

Every byte the project reads or writes goes through an `ObjectStore`. Two implement it: `S3Store`
(`retrainer.storage.s3`: AWS S3, MinIO, R2, SeaweedFS over HTTP) and `FolderStore`
(`retrainer.storage.folder`: a local folder, for a host without S3). A third store subclasses
`ObjectStore`, implements its abstract methods, and passes the tests taking `any_store`
(tests/test_storage.py). What the product relies on:

- a write is all or nothing: a reader sees the old object or the new one, never a mix;
- a conditional write (`put` with `if_none_match` or `if_match`) is decided by the store: of writers
  racing to create a key, or to move a pointer from one ETag, exactly one wins and the others get
  `PreconditionFailedError`; and a conditional write knows its own success (`put` says how);
- an ETag follows the content (the same bytes, the same ETag; quotes kept, as S3 spells it), and a read
  can be conditional on it (`get_if_changed`: a follower polls a pointer without downloading it again);
- listings are sorted by key; a prefix is a string prefix, not a folder;
- a key a store cannot hold or reach safely raises `InvalidKeyError`, and nothing is read or written.

This module imports neither boto3 nor anything of a particular store.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from retrainer.settings import S3Settings

REWRITE_ATTEMPTS = 5
"""`ObjectStore.rewrite` reads and changes an object again at most this often when other writers keep
replacing it (a nightly run committing meanwhile, say)."""


class StorageError(Exception):
    """The store refused a request for a reason the operator must fix or retry; the message says which."""


class PreconditionFailedError(StorageError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class InvalidKeyError(StorageError, ValueError):
    """A key this store cannot hold or reach safely (the message names it and says why); nothing was
    read or written. E.g. a key clashing with the local folder store's own file suffixes."""


class BucketNotFoundError(StorageError):
    """The configured bucket does not exist (production buckets are provisioned, never created by a run)."""


class BucketAccessDeniedError(StorageError):
    """The store refused access to the bucket: wrong credentials or no permission."""


class LifecycleUnsupportedError(StorageError):
    """The store has no bucket lifecycle configuration; the message lists the rules to apply elsewhere."""


@dataclass(frozen=True)
class ExpiryRule:
    """A lifecycle rule of the product's: objects under `prefix` (with object tag `tag`, if given)
    expire `days` after they were written, or, with `noncurrent`, earlier versions `days` after they
    stopped being current (buckets with versioning)."""

    name: str
    prefix: str
    days: int
    tag: tuple[str, str] | None = None
    noncurrent: bool = False

    @property
    def rule_id(self) -> str:
        return f"ticket-retrainer-{self.name}"

    def as_s3(self) -> dict:
        """The rule as S3's lifecycle configuration spells it."""
        if self.tag:
            key, value = self.tag
            rule_filter = {"And": {"Prefix": self.prefix, "Tags": [{"Key": key, "Value": value}]}}
        else:
            rule_filter = {"Prefix": self.prefix}
        action = (
            {"NoncurrentVersionExpiration": {"NoncurrentDays": self.days}}
            if self.noncurrent
            else {"Expiration": {"Days": self.days}}
        )
        return {"ID": self.rule_id, "Filter": rule_filter, "Status": "Enabled", **action}

    def __str__(self) -> str:
        scope = f"{self.prefix or 'every object'}" + (f" tagged {'='.join(self.tag)}" if self.tag else "")
        what = "earlier versions of" if self.noncurrent else "objects under"
        return f"{what} {scope}: {self.days} days"


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed: its key, ETag (quotes kept, as S3 returns it) and size in bytes."""

    key: str
    etag: str
    size: int


class ObjectStore(ABC):
    """A bucket on some store; the interface every task uses (`retrainer.storage.open_store` builds the
    one the settings name).

    The abstract methods are what a store implements; the rest (conditional writes that know their own
    success, listings sorted, directory upload and download, the scratch-only delete) is written here
    once, on top of them.
    """

    _request_errors: tuple[type[Exception], ...] = (OSError,)
    """The errors a request fails with when the store could not answer it (not a refusal): `put` reads
    an ambiguous write back and reports a read-back that fails with one of these as a `StorageError`."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket

    # -- what each store implements ----------------------------------------------------------------

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where this store is (a URL, for messages)."""

    @abstractmethod
    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist yet (idempotent); True when it was created.

        Only for `retrainer setup --create-bucket`, the demo and tests: a run never creates its bucket.
        """

    @abstractmethod
    def require_bucket(self) -> None:
        """Check that the bucket exists and this process may use it.

        Raises `BucketNotFoundError` or `BucketAccessDeniedError` with a message naming the bucket,
        the endpoint and what to do.
        """

    @abstractmethod
    def apply_expiry_rules(self, rules: list[ExpiryRule]) -> None:
        """Put `rules` into the bucket's lifecycle configuration (idempotent: a rule replaces the one of
        its id; the bucket's other rules are kept).

        Raises `LifecycleUnsupportedError`, listing the rules, when the store has no lifecycle rules.
        """

    @abstractmethod
    def tag(self, key: str, name: str, value: str) -> None:
        """Set the object tag `name`=`value` on `key` (its other tags are replaced: the product sets one).
        A new write of `key` clears its tags."""

    @abstractmethod
    def tags(self, key: str) -> dict[str, str]:
        """The object tags of `key`."""

    @abstractmethod
    def list_folders(self, prefix: str) -> list[str]:
        """The immediate "sub-folders" under `prefix` (common prefixes ending in ``/``), sorted."""

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag. Raises `KeyError` when it does not exist."""

    @abstractmethod
    def get_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when its ETag is still `etag` (a conditional GET,
        If-None-Match: the bytes do not travel). `etag=None` always reads. Raises `KeyError` when it
        does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error when it is already gone).

        Only erasure on request (`tasks.erasure`) deletes outside run scratch: it removes the objects
        that hold a ticket someone asked to be forgotten; and `retrainer datasets gc` deletes the parts of
        curated data that no dataset version lists (`tasks.dataset`). With bucket versioning on, an S3
        store keeps the object's earlier versions until a noncurrent-version expiry rule removes them.
        """

    @abstractmethod
    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in any order."""

    @abstractmethod
    def _write(
        self, key: str, data: bytes, content_type: str, if_none_match: bool, if_match: str | None
    ) -> str:
        """Write `data` to `key` all or nothing and return its ETag; a condition (`put` says which) is
        decided atomically with the write, and a losing one raises `PreconditionFailedError`."""

    @abstractmethod
    def _ambiguous(self, error: Exception) -> bool:
        """True when `_write` failed with `error` and may nevertheless have written: `put` then reads
        the object back to decide."""

    @abstractmethod
    def _download(self, key: str, target: Path) -> None:
        """Copy the object `key` into the file `target` (whose folder exists)."""

    # -- what every store shares -------------------------------------------------------------------

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """All objects under `prefix`, sorted by key."""
        return sorted(self._iter_objects(prefix), key=lambda info: info.key)

    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        """Like `get`, but None when the object does not exist."""
        try:
            return self.get(key)
        except KeyError:
            return None

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write an object and return its new ETag.

        `if_none_match=True` writes only if the key does not exist; `if_match=etag` only if the
        object still has that ETag. A losing condition raises `PreconditionFailedError`.

        A conditional write knows its own success: when its outcome is ambiguous (the answer was lost,
        or a refusal came to a retry whose earlier attempt may have written), the object is read back,
        and if it holds exactly `data` the write succeeded and its ETag is returned.
        """
        try:
            return self._write(key, data, content_type, if_none_match, if_match)
        except Exception as error:
            conditional = if_none_match or if_match is not None
            if not conditional or not self._ambiguous(error):
                raise
            return self._settle(key, data, error)

    def _settle(self, key: str, data: bytes, error: Exception) -> str:
        """Decide an ambiguous conditional write by reading `key` back: its ETag when it holds exactly
        `data` (the write happened), else the error it is (a lost race stays `PreconditionFailedError`)."""
        try:
            found = self.get_if_exists(key)
        except self._request_errors as unreadable:
            raise StorageError(
                f"conditional write to {self.uri(key)} may have happened ({_one_line(error)}); reading it "
                f"back failed too ({_one_line(unreadable)})"
            ) from error
        if found is not None and found[0] == data:
            return found[1]
        if isinstance(error, PreconditionFailedError):
            raise error
        raise StorageError(
            f"conditional write to {self.uri(key)} failed ({_one_line(error)}); it does not hold this write"
        ) from error

    def rewrite(
        self,
        key: str,
        change: Callable[[bytes], bytes | None],
        *,
        content_type: str = "application/octet-stream",
        attempts: int = REWRITE_ATTEMPTS,
    ) -> bool:
        """Replace `key` with `change(its bytes)` If-Match the ETag read (None from `change`: nothing to
        change), reading and changing again when another writer replaced it meanwhile. Whether it was
        rewritten (False also when the object does not exist)."""
        for _ in range(attempts):
            found = self.get_if_exists(key)
            if found is None:
                return False
            changed = change(found[0])
            if changed is None:
                return False
            try:
                self.put(key, changed, if_match=found[1], content_type=content_type)
                return True
            except PreconditionFailedError:
                continue
        raise StorageError(
            f"{self.uri(key)} changed during each of {attempts} attempts to rewrite it: run again"
        )

    def upload_dir(self, local_dir: Path, prefix: str, *, immutable: bool = True) -> list[str]:
        """Upload every file below `local_dir` under `prefix`; `immutable` refuses to overwrite."""
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(local_dir).as_posix()
            self.put(key, path.read_bytes(), if_none_match=immutable)
            keys.append(key)
        return keys

    def download_prefix(self, prefix: str, local_dir: Path) -> int:
        """Copy every object under `prefix` into `local_dir`; returns how many were copied."""
        objects = self.list_objects(prefix)
        for info in objects:
            target = local_dir / info.key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(info.key, target)
        return len(objects)

    def delete_scratch(self, prefix: str) -> tuple[int, int]:
        """Delete every object under `prefix`, which must lie in the runs (scratch) prefix.

        Returns how many objects and bytes were deleted. Anything outside `runs_prefix` (datasets,
        models, history, quarantine) is refused here: only erasure and the clean-up of unlisted dataset
        parts delete there (`delete`).
        """
        scratch = self.settings.runs_prefix
        if not scratch or not prefix.startswith(scratch) or prefix == scratch:
            raise ValueError(
                f"refusing to delete {self.uri(prefix)}: only run scratch below "
                f"{self.uri(scratch)} is ever deleted"
            )
        objects = self.list_objects(prefix)
        self.delete_many([info.key for info in objects])
        return len(objects), sum(info.size for info in objects)

    def delete_many(self, keys: list[str]) -> None:
        """Delete `keys` (a missing one is no error): one by one here; a store with a batch delete
        overrides it (S3: up to 1,000 keys a request). Scratch clean-up, erasure and the clean-up of
        dataset parts delete through it."""
        for key in keys:
            self.delete(key)

    def uri(self, key: str) -> str:
        """The s3:// address of `key`, for humans (logs, reports)."""
        return f"s3://{self.bucket}/{key}"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
