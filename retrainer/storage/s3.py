"""`S3Store`: the store contract on an S3-compatible server over HTTP (AWS S3, MinIO, R2, SeaweedFS).

This is the only module that builds a boto3 client. Credentials come from boto3's standard chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), never from settings,
so they cannot leak into logs or artifacts through a settings dump.
"""

import random
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries import standard as standard_retries

from retrainer.settings import S3Settings
from retrainer.storage.contract import (
    BucketAccessDeniedError,
    BucketNotFoundError,
    ExpiryRule,
    LifecycleUnsupportedError,
    ObjectInfo,
    ObjectStore,
    PreconditionFailedError,
    StorageError,
)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_NOT_MODIFIED_CODES = {"304", "NotModified"}
_PRECONDITION_CODES = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request may carry
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_UNSUPPORTED = {"NotImplemented", "MethodNotAllowed", "XNotImplemented"}
_BACKOFF_FIRST_S = 0.5  # back-off before the first retry; it doubles up to _BACKOFF_MAX_S
_BACKOFF_MAX_S = 8.0
_STARTED = "retrainer_started"  # where a request's first attempt is stamped in botocore's request context


class S3Store(ObjectStore):
    """The `ObjectStore` contract on bucket `settings.bucket` of the S3 server at `settings.endpoint_url`
    (boto3's default, AWS, when unset)."""

    _request_errors = (ClientError, BotoCoreError, OSError)

    def __init__(self, settings: S3Settings, client=None, credentials: tuple[str, str] | None = None) -> None:
        """`credentials` (access key id, secret key) override boto3's own chain (environment, profile,
        instance role), e.g. for a local store started with its own keys."""
        super().__init__(settings)
        self._client = client or _build_client(settings, credentials)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint this store talks to (for messages)."""
        return self.settings.endpoint_url or self._client.meta.endpoint_url

    def ensure_bucket(self) -> bool:
        try:
            self.require_bucket()
        except BucketNotFoundError:
            self._client.create_bucket(Bucket=self.bucket)
            return True
        return False

    def require_bucket(self) -> None:
        """One HeadBucket (see `ObjectStore.require_bucket`)."""
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

    def apply_expiry_rules(self, rules: list[ExpiryRule]) -> None:
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
        self._client.put_object_tagging(
            Bucket=self.bucket, Key=key, Tagging={"TagSet": [{"Key": name, "Value": value}]}
        )

    def tags(self, key: str) -> dict[str, str]:
        tag_set = self._client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], etag=item["ETag"], size=item["Size"])

    def list_folders(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        folders = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            folders.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
        return sorted(folders)

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                raise KeyError(key) from error
            raise
        return response["Body"].read(), response["ETag"]

    def get_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """One GetObject with If-None-Match: S3 answers 304 (None here) while the ETag is `etag`."""
        if etag is None:
            return self.get(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key, IfNoneMatch=etag)
        except ClientError as error:
            code = _error_code(error)
            if code in _NOT_MODIFIED_CODES:
                return None
            if code in _NOT_FOUND_CODES:
                raise KeyError(key) from error
            raise
        return response["Body"].read(), response["ETag"]

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

    def _ambiguous(self, error: Exception) -> bool:
        """True for a refusal that came to a retry (an earlier attempt may have written and lost its
        answer), or a lost answer, a timeout or a server error that ended the retries."""
        if isinstance(error, PreconditionFailedError):
            return isinstance(error.__cause__, ClientError) and _retry_attempts(error.__cause__) > 0
        if isinstance(error, ClientError):
            return str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")).startswith("5")
        return isinstance(error, BotoCoreError)

    def _download(self, key: str, target: Path) -> None:
        self._client.download_file(self.bucket, key, str(target))

    def delete_many(self, keys: list[str]) -> None:
        """Delete `keys` in as few requests as S3 allows (a missing key is no error)."""
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
        self._client.delete_object(Bucket=self.bucket, Key=key)


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
