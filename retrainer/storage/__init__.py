"""The one storage seam: every byte the project reads or writes goes through an `ObjectStore`.

`contract` holds the contract (the abstract `ObjectStore`, its errors and values), `s3` the store on an
S3-compatible server (`S3Store`), `folder` the store on a local folder (`FolderStore`); `open_store`
builds the one the settings name. The names are re-exported here, so code imports them from
`retrainer.storage` and never needs to know which store it got.
"""

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
    StorageError,
)
from retrainer.storage.folder import FolderStore
from retrainer.storage.s3 import S3Store

__all__ = [
    "BucketAccessDeniedError",
    "BucketNotFoundError",
    "ExpiryRule",
    "FolderStore",
    "InvalidKeyError",
    "LifecycleUnsupportedError",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailedError",
    "S3Store",
    "StorageError",
    "open_store",
]

LOCAL_SCHEME = "file://"
"""An endpoint URL starting with this names a local folder (`FolderStore`), not S3."""


def open_store(settings: S3Settings, credentials: tuple[str, str] | None = None) -> ObjectStore:
    """The store `settings` point at: S3 (AWS, MinIO, SeaweedFS, ...) over HTTP, or, for an endpoint
    ``file:///PATH``, the local-folder store of a host without S3 (`credentials` then unused)."""
    if (settings.endpoint_url or "").startswith(LOCAL_SCHEME):
        return FolderStore(settings)
    return S3Store(settings, credentials=credentials)
