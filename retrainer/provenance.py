"""Where a model came from: code version and library versions, recorded with every model."""

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import retrainer

_LIBRARIES = (
    "ticket-retrainer",
    "torch",
    "transformers",
    "datasets",
    "evaluate",
    "prefect",
    "boto3",
    "pandas",
)


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (and ``-dirty``) when running from a checkout."""
    source_root = Path(retrainer.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source_root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return retrainer.__version__
    return f"{retrainer.__version__}+g{commit}" if commit else retrainer.__version__


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a trained model."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
