"""`FolderStore`: the store contract on a local folder, for one host without an S3 server
(`RETRAINER_S3__ENDPOINT_URL=file:///PATH`).

Why it exists: a GPU host often has no S3 server, and SeaweedFS's 150 MB binary cannot always be
brought there; the product still has to run its whole nightly cycle on such a host. It keeps the
contract (`retrainer.storage.contract`; tests/test_storage.py runs the same tests against both stores)
this way:

- a write is all or nothing: the bytes and their ETag (MD5, as S3's for a single-part upload) are one
  file, written beside it and renamed into place, so a reader sees the old object or the new one;
- `if_none_match` and `if_match` are decided under an exclusive `flock`, so of two processes racing to
  create a key or to move a pointer from one ETag, exactly one wins;
- listings are sorted by key; a prefix is a string prefix, not a folder;
- nothing is read, written or listed through a symbolic link below the bucket folder (a link could lead
  anywhere on the host): such a key raises `InvalidKeyError`, and listings skip it with a warning.

Limits: one host (or a file system with working POSIX locks); no bucket versioning and no lifecycle
rules (`apply_expiry_rules` says which to apply by other means); object tags live in a file beside the
object. Production with several hosts uses S3.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from retrainer.settings import S3Settings
from retrainer.storage.contract import (
    BucketAccessDeniedError,
    BucketNotFoundError,
    ExpiryRule,
    InvalidKeyError,
    LifecycleUnsupportedError,
    ObjectInfo,
    ObjectStore,
    PreconditionFailedError,
)

OBJECT_SUFFIX = ".~object"
"""An object ``a/b`` is the file ``a/b.~object``, so that keys ``a`` and ``a/b`` can both exist (a file
and a folder of one name cannot)."""
TAGS_SUFFIX = ".~tags"
_RESERVED = ".~store"  # temporary files and locks, beside the objects on the same file system
_LOCK_STRIPES = 64  # one lock file per stripe of keys: writers of different keys rarely wait for each other
_log = logging.getLogger(__name__)


def directory_of(endpoint_url: str) -> Path:
    """The local folder a ``file://`` endpoint names (its buckets are sub-folders)."""
    parsed = urlparse(endpoint_url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path:
        raise ValueError(f"not a local store address: {endpoint_url!r} (expected file:///absolute/path)")
    return Path(unquote(parsed.path))


class FolderStore(ObjectStore):
    """The `ObjectStore` contract on a local folder: bucket `settings.bucket` under the folder that
    `settings.endpoint_url` (``file:///PATH``) names."""

    def __init__(self, settings: S3Settings) -> None:  # no client: nothing here speaks HTTP
        super().__init__(settings)
        self.root = directory_of(settings.endpoint_url or "")
        self.bucket_dir = self.root / self.bucket

    @property
    def endpoint(self) -> str:
        return self.root.as_uri()

    def ensure_bucket(self) -> bool:
        if self.bucket_dir.is_dir():
            return False
        (self.bucket_dir / _RESERVED).mkdir(parents=True, exist_ok=True)
        return True

    def require_bucket(self) -> None:
        if not self.bucket_dir.is_dir():
            raise BucketNotFoundError(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it with "
                "`retrainer setup --create-bucket`"
            )
        if not os.access(self.bucket_dir, os.R_OK | os.W_OK | os.X_OK):
            raise BucketAccessDeniedError(
                f"access to bucket {self.bucket!r} at {self.endpoint} denied: this user cannot read and "
                f"write {self.bucket_dir}"
            )

    def apply_expiry_rules(self, rules: list[ExpiryRule]) -> None:
        raise LifecycleUnsupportedError(
            f"{self.endpoint} is a local directory without lifecycle rules: expire these yourself "
            f"(e.g. a cron job deleting old files): {'; '.join(map(str, rules))}"
        )

    def tag(self, key: str, name: str, value: str) -> None:
        self._require_object(key)
        _write_atomically(self._path(key, TAGS_SUFFIX), json.dumps({name: value}).encode(), self._scratch())

    def tags(self, key: str) -> dict[str, str]:
        self._require_object(key)
        path = self._path(key, TAGS_SUFFIX)
        return json.loads(path.read_bytes()) if path.is_file() else {}

    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        for key, path in self._iter_keys(prefix):
            info = _read_header(path)
            if info is not None:  # deleted between the walk and the read
                yield ObjectInfo(key=key, etag=info[0], size=info[1])

    def _iter_keys(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """(key, object file) of every object under `prefix`, from the folder walk alone."""
        root = self._listing_root(prefix)
        link = self._first_link(root)
        if link is not None:
            _log.warning("not listing %s: %s is a symbolic link", self.uri(prefix), link)
            return
        for path in self._walk(root):
            key = path.relative_to(self.bucket_dir).as_posix()[: -len(OBJECT_SUFFIX)]
            if key.startswith(prefix):
                yield key, path

    def _walk(self, folder: Path) -> Iterator[Path]:
        """The object files below `folder`, never entering or yielding a symbolic link."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):  # deleted meanwhile, or no such folder
            return
        for entry in entries:
            if entry.is_symlink():
                _log.warning("skipping %s: a symbolic link in the local store is never followed", entry.path)
            elif entry.is_dir():
                if not (entry.name == _RESERVED and folder == self.bucket_dir):
                    yield from self._walk(Path(entry.path))
            elif entry.name.endswith(OBJECT_SUFFIX):
                yield Path(entry.path)

    def list_folders(self, prefix: str) -> list[str]:
        # folder names come from the keys alone: no object file is opened
        rests = (key[len(prefix) :] for key, _ in self._iter_keys(prefix))
        return sorted({prefix + rest.split("/", 1)[0] + "/" for rest in rests if "/" in rest})

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            with self._path(key).open("rb") as file:
                etag, _ = _parse_header(file.readline())
                return file.read(), etag
        except FileNotFoundError:
            raise KeyError(key) from None

    def get_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """The header line alone decides: an unchanged object's bytes are not read."""
        try:
            with self._path(key).open("rb") as file:
                current, _ = _parse_header(file.readline())
                return None if current == etag else (file.read(), current)
        except FileNotFoundError:
            raise KeyError(key) from None

    def _write(
        self, key: str, data: bytes, content_type: str, if_none_match: bool, if_match: str | None
    ) -> str:
        path = self._path(key)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        header = json.dumps({"etag": etag, "size": len(data), "content_type": content_type}).encode()
        staged = _stage(header + b"\n" + data, self._scratch())
        try:
            with self._key_lock(key):
                current = _read_header(path)
                if (if_none_match and current is not None) or (
                    if_match is not None and (current is None or current[0] != if_match)
                ):
                    raise PreconditionFailedError(f"conditional write to {self.uri(key)} refused")
                _rename_into_place(staged, path)
                self._path(key, TAGS_SUFFIX).unlink(missing_ok=True)  # S3: a new object has no tags
        finally:
            staged.unlink(missing_ok=True)
        return etag

    def _ambiguous(self, error: Exception) -> bool:
        # A condition is decided under the key's lock, never ambiguous; an OS error may come after the
        # rename that made the write (the tags' clean-up), so the put reads back what is there.
        return isinstance(error, OSError)

    def _download(self, key: str, target: Path) -> None:
        with self._path(key).open("rb") as source, target.open("wb") as out:
            source.readline()  # the header
            shutil.copyfileobj(source, out)

    def delete(self, key: str) -> None:
        with self._key_lock(key):
            self._path(key).unlink(missing_ok=True)
            self._path(key, TAGS_SUFFIX).unlink(missing_ok=True)
        _remove_empty_folders(self._path(key).parent, self.bucket_dir)

    # -- the folder layout -----------------------------------------------------------------------

    def _path(self, key: str, suffix: str = OBJECT_SUFFIX) -> Path:
        """The file of `key`; refuses (`InvalidKeyError`) keys that would leave the bucket, clash with the
        layout, or lead through a symbolic link."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            reason = "an empty, absolute, `.` or `..` part would leave the bucket"
        elif parts[0] == _RESERVED or any(part.endswith((OBJECT_SUFFIX, TAGS_SUFFIX)) for part in parts):
            reason = f"a part named {_RESERVED} or ending in {OBJECT_SUFFIX} or {TAGS_SUFFIX} is the store's"
        else:
            path = self.bucket_dir.joinpath(*parts[:-1], parts[-1] + suffix)
            link = self._first_link(path)
            if link is None:
                return path
            reason = f"{link} is a symbolic link, never followed out of the bucket folder"
        raise InvalidKeyError(f"key {key!r} cannot be stored in the local directory store: {reason}")

    def _first_link(self, path: Path) -> Path | None:
        """The first folder or file from the bucket folder down to `path` that is a symbolic link."""
        current = self.bucket_dir
        for part in path.relative_to(self.bucket_dir).parts:
            current = current / part
            if current.is_symlink():
                return current
        return None

    def _listing_root(self, prefix: str) -> Path:
        """The deepest folder holding every key that starts with `prefix`."""
        folders = [part for part in prefix.split("/")[:-1] if part not in ("", ".", "..")]
        return self.bucket_dir.joinpath(*folders)

    def _scratch(self) -> Path:
        scratch = self.bucket_dir / _RESERVED
        if not scratch.is_dir():
            self.require_bucket()  # a missing bucket says so, as S3 would, instead of a bare OSError
            scratch.mkdir(exist_ok=True)
        return scratch

    def _require_object(self, key: str) -> None:
        if not self._path(key).is_file():
            raise KeyError(key)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """An exclusive lock shared by every process on this host that writes `key`."""
        stripe = zlib.crc32(key.encode()) % _LOCK_STRIPES
        with (self._scratch() / f"lock-{stripe:02d}").open("a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def _parse_header(line: bytes) -> tuple[str, int]:
    header = json.loads(line)
    return header["etag"], header["size"]


def _read_header(path: Path) -> tuple[str, int] | None:
    """(ETag, size) of the object file at `path`; None when there is none."""
    try:
        with path.open("rb") as file:
            return _parse_header(file.readline())
    except FileNotFoundError:
        return None


def _stage(content: bytes, scratch: Path) -> Path:
    """`content` in a new file under `scratch`, flushed to disk, ready to be renamed into place."""
    handle, name = tempfile.mkstemp(dir=scratch, prefix="put-")
    with os.fdopen(handle, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    return Path(name)


def _rename_into_place(staged: Path, path: Path) -> None:
    """Rename `staged` to `path`, creating its folders; again if a delete of the folder's last other
    object removed a folder just created (deletes tidy empty folders without this key's lock)."""
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, path)
            return
        except FileNotFoundError:
            if attempt == 2 or not staged.exists():
                raise


def _write_atomically(path: Path, content: bytes, scratch: Path) -> None:
    staged = _stage(content, scratch)
    try:
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def _remove_empty_folders(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents up to (not including) `stop` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or another writer just used it): keep it
            return
        folder = folder.parent
