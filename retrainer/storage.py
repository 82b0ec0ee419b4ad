"""The one storage seam: every byte the project reads or writes goes through `ObjectStore`.

This is the only module that builds a boto3 client. Credentials come from boto3's standard chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), never from settings,
so they cannot leak into logs or artifacts through a settings dump.
"""

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries import standard as standard_retries

from retrainer.settings import S3Settings

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION_CODES = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request may carry
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_BACKOFF_FIRST_S = 0.5  # back-off before the first retry; it doubles up to _BACKOFF_MAX_S
_BACKOFF_MAX_S = 8.0
_STARTED = "retrainer_started"  # where a request's first attempt is stamped in botocore's request context


class StorageError(Exception):
    """The store refused a request for a reason the operator must fix or retry; the message says which."""


class PreconditionFailedError(StorageError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class InvalidKeyError(StorageError, ValueError):
    """A key this store cannot hold or reach safely (the message names it and says why); nothing was
    read or written. E.g. a key clashing with the local directory store's own file suffixes."""


class BucketNotFoundError(StorageError):
    """The configured bucket does not exist (production buckets are provisioned, never created by a run)."""


class BucketAccessDeniedError(StorageError):
    """The store refused access to the bucket: wrong credentials or no permission."""


class LifecycleUnsupportedError(StorageError):
    """The store has no bucket lifecycle configuration; the message lists the rules to apply elsewhere."""


_UNSUPPORTED = {"NotImplemented", "MethodNotAllowed", "XNotImplemented"}


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


class ObjectStore:
    """A bucket on an S3-compatible store (AWS S3, MinIO, R2, SeaweedFS); the interface every task uses.

    `open_store` builds the one the settings name; `retrainer.directory_store.DirectoryStore` keeps the
    same contract on a local folder for a host without S3.
    """

    def __init__(self, settings: S3Settings, client=None, credentials: tuple[str, str] | None = None) -> None:
        """`credentials` (access key id, secret key) override boto3's own chain (environment, profile,
        instance role), e.g. for a local store started with its own keys."""
        self.settings = settings
        self.bucket = settings.bucket
        self._client = client or _build_client(settings, credentials)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist yet (idempotent); True when it was created.

        Only for `retrainer setup --create-bucket`, the demo and tests: a run never creates its bucket.
        """
        try:
            self.require_bucket()
        except BucketNotFoundError:
            self._client.create_bucket(Bucket=self.bucket)
            return True
        return False

    def apply_expiry_rules(self, rules: list["ExpiryRule"]) -> None:
        """Put `rules` into the bucket's lifecycle configuration (idempotent: a rule replaces the one of
        its id; the bucket's other rules are kept).

        Raises `LifecycleUnsupportedError` when the store has no lifecycle configuration.
        """
        try:
            existing = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except ClientError as error:
            if _error_code(error) not in {"NoSuchLifecycleConfiguration", *_UNSUPPORTED}:
                raise
            existing = []
        ours = {rule.rule_id for rule in rules}
        kept = [rule for rule in existing if rule.get("ID") not in ours]
        try:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": [*kept, *(rule.as_s3() for rule in rules)]},
            )
        except ClientError as error:
            if _error_code(error) in _UNSUPPORTED:
                raise LifecycleUnsupportedError(
                    f"{self.endpoint} does not support bucket lifecycle configuration "
                    f"({_error_code(error)}): expire these yourself: {'; '.join(map(str, rules))}"
                ) from error
            raise

    def tag(self, key: str, name: str, value: str) -> None:
        """Set the object tag `name`=`value` on `key` (its other tags are replaced: the product sets one)."""
        self._client.put_object_tagging(
            Bucket=self.bucket, Key=key, Tagging={"TagSet": [{"Key": name, "Value": value}]}
        )

    def tags(self, key: str) -> dict[str, str]:
        """The object tags of `key`."""
        tag_set = self._client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def require_bucket(self) -> None:
        """Check that the bucket exists and these credentials may use it (one HeadBucket).

        Raises `BucketNotFoundError` or `BucketAccessDeniedError` with a message naming the bucket,
        the endpoint and what to do.
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = _error_code(error)
            if code in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it with "
                    "`retrainer setup --create-bucket` or your infrastructure"
                ) from error
            if code in _DENIED_CODES:
                # HeadBucket has no body, so a wrong secret and a missing permission both read 403.
                raise BucketAccessDeniedError(
                    f"access to bucket {self.bucket!r} at {self.endpoint} denied (HTTP {code}): check "
                    "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the role) and permissions"
                ) from error
            raise

    @property
    def endpoint(self) -> str:
        """The S3 endpoint this store talks to (for messages)."""
        return self.settings.endpoint_url or self._client.meta.endpoint_url

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """All objects under `prefix`, sorted by key."""
        return sorted(self._iter_objects(prefix), key=lambda info: info.key)

    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], etag=item["ETag"], size=item["Size"])

    def list_folders(self, prefix: str) -> list[str]:
        """The immediate "sub-folders" under `prefix` (common prefixes ending in ``/``), sorted."""
        paginator = self._client.get_paginator("list_objects_v2")
        folders = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            folders.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
        return sorted(folders)

    def get(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag. Raises `KeyError` when it does not exist."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                raise KeyError(key) from error
            raise
        return response["Body"].read(), response["ETag"]

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

    def _ambiguous(self, error: Exception) -> bool:
        """True when a failed write may nevertheless have happened: a refusal that came to a retry (an
        earlier attempt may have written and lost its answer), or a lost answer, a timeout or a server
        error that ended the retries."""
        if isinstance(error, PreconditionFailedError):
            return isinstance(error.__cause__, ClientError) and _retry_attempts(error.__cause__) > 0
        if isinstance(error, ClientError):
            return str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")).startswith("5")
        return isinstance(error, BotoCoreError)

    def _settle(self, key: str, data: bytes, error: Exception) -> str:
        """Decide an ambiguous conditional write by reading `key` back: its ETag when it holds exactly
        `data` (the write happened), else the error it is (a lost race stays `PreconditionFailedError`)."""
        try:
            found = self.get_if_exists(key)
        except (ClientError, BotoCoreError, OSError) as unreadable:
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

    def _write(
        self, key: str, data: bytes, content_type: str, if_none_match: bool, if_match: str | None
    ) -> str:
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            response = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **conditions
            )
        except ClientError as error:
            if _error_code(error) in _PRECONDITION_CODES:
                raise PreconditionFailedError(f"conditional write to {self.uri(key)} refused") from error
            raise
        return response["ETag"]

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

    def _download(self, key: str, target: Path) -> None:
        self._client.download_file(self.bucket, key, str(target))

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
        self._delete_keys([info.key for info in objects])
        return len(objects), sum(info.size for info in objects)

    def _delete_keys(self, keys: list[str]) -> None:
        """Delete `keys` in as few requests as S3 allows."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                example = f"{self.uri(first.get('Key', ''))}: {first.get('Code')} {first.get('Message', '')}"
                failed = len(response["Errors"])
                raise StorageError(
                    f"could not delete {failed} of {len(batch)} objects, e.g. {example}".rstrip()
                )

    def delete(self, key: str) -> None:
        """Delete one object (no error when it is already gone).

        Only erasure on request (`tasks.erasure`) deletes outside run scratch: it removes the objects
        that hold a ticket someone asked to be forgotten; and `retrainer datasets gc` deletes the parts of
        curated data that no dataset version lists (`tasks.dataset`). With bucket versioning on, the
        store keeps the object's earlier versions until a noncurrent-version expiry rule removes them.
        """
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def uri(self, key: str) -> str:
        """The s3:// address of `key`, for humans (logs, reports)."""
        return f"s3://{self.bucket}/{key}"


LOCAL_SCHEME = "file://"
"""An endpoint URL starting with this names a local folder (`retrainer.directory_store`), not S3."""


def open_store(settings: S3Settings, credentials: tuple[str, str] | None = None) -> ObjectStore:
    """The store `settings` point at: S3 (AWS, MinIO, SeaweedFS, ...) over HTTP, or, for an endpoint
    ``file:///PATH``, the local-directory store of a host without S3 (`credentials` then unused)."""
    if (settings.endpoint_url or "").startswith(LOCAL_SCHEME):
        from retrainer.directory_store import DirectoryStore  # a module that imports this one

        return DirectoryStore(settings)
    return ObjectStore(settings, credentials=credentials)


def _build_client(settings: S3Settings, credentials: tuple[str, str] | None = None):
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_pool_connections,  # concurrent loads need more than the default 10
    )
    keys = (
        dict(zip(("aws_access_key_id", "aws_secret_access_key"), credentials, strict=True))
        if credentials
        else {}
    )
    client = boto3.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config, **keys
    )
    _pace_retries(client, settings)
    return client


def _pace_retries(client, settings: S3Settings) -> None:
    """Replace botocore's standard retry handler by `_PacedRetries`: the same decisions on what is
    retried, paced to ride out a store restart, and no retry after `retry_deadline_s`."""
    unique_id = "retry-config-s3"  # what botocore registers its standard handler as
    client.meta.events.unregister("needs-retry.s3", unique_id=unique_id)
    client.meta.events.register("before-call.s3", _stamp_first_attempt)
    client.meta.events.register(
        "needs-retry.s3", _PacedRetries(settings.max_attempts, settings.retry_deadline_s), unique_id=unique_id
    )


def _stamp_first_attempt(context: dict, **_) -> None:
    context[_STARTED] = time.monotonic()


class _PacedRetries:
    """A needs-retry handler: botocore's standard retry conditions (connection errors, timeouts, 5xx,
    throttling; `max_attempts` in all), a back-off doubling from 0.5 s to 8 s, and a deadline.

    botocore's own back-off for a 5xx or a lost connection starts at 50 ms and is spent in about a
    second, and its retry quota (shared by a client's threads) stops retries when many requests fail
    at once: both too soon for a store that restarts. The deadline keeps the total bounded instead.
    """

    def __init__(self, max_attempts: int, deadline_s: float) -> None:
        self._conditions = standard_retries.StandardRetryConditions(max_attempts=max_attempts)
        self._adapter = standard_retries.RetryEventAdapter()
        self._deadline_s = deadline_s

    def __call__(self, *, attempts: int, request_dict: dict, **kwargs) -> float | bool | None:
        context = self._adapter.create_retry_context(attempts=attempts, request_dict=request_dict, **kwargs)
        retryable = self._conditions.is_retryable(context)
        self._adapter.adapt_retry_response_from_context(context)  # "reached max retries" in the message
        if not retryable:
            return None
        delay = min(_BACKOFF_FIRST_S * 2 ** (attempts - 1), _BACKOFF_MAX_S) * random.uniform(0.5, 1.0)
        started = request_dict.get("context", {}).get(_STARTED)
        if started is not None and time.monotonic() - started + delay > self._deadline_s:
            return False  # botocore then raises the last attempt's error, which names the endpoint
        return delay


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _retry_attempts(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
