"""What a flow works with: its settings and the object store they point at, passed in as one value.

The flows' entrypoints build it from the environment when nobody passes one (a deployment run, the
`retrainer run` command); the demo, the tests and notebooks build their own and pass it, so nothing has
to write `os.environ` to steer a run (the resources pattern of Dagster's `project_fully_featured`).
"""

from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore, open_store


class Resources:
    """A flow's settings and store.

    Not a dataclass or pydantic model on purpose: Prefect records a flow's parameters in its database by
    encoding them to JSON, and an object it cannot encode is recorded as ``<Resources>``. A dataclass
    would be encoded field by field, store client and settings included.
    """

    __slots__ = ("settings", "store")

    def __init__(self, settings: RetrainerSettings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings.s3)

    @classmethod
    def from_environment(cls) -> "Resources":
        """Settings from ``RETRAINER_*`` variables; the store from them and boto3's credential chain."""
        return cls(RetrainerSettings())

    def with_overrides(self, **overrides) -> "Resources":
        """The same store, with a run's overrides on the settings (`RetrainerSettings.with_overrides`;
        they never change where S3 is)."""
        return Resources(self.settings.with_overrides(**overrides), self.store)

    def __repr__(self) -> str:
        return f"Resources(bucket={self.store.bucket!r}, base_model={self.settings.base_model!r})"
