"""The `retrainer` command as a user runs it (a subprocess), and the short demo run once per session.

`retrainer demo` really fine-tunes the packaged MiniLM and publishes it through SeaweedFS; the demo
test checks its run and the behavioural tests (tests/test_model_behaviour.py) probe the production model
it downloaded, so the session trains it once (the `demo_run` fixture in tests/conftest.py).
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEMO_WORKDIR = "demo"
SHORT_RECIPE = {"RETRAINER_TRAINING__NUM_TRAIN_EPOCHS": "2", "RETRAINER_TRAINING__AVERAGE_SHARE": "0"}
"""The packaged model for real, with the short recipe of two epochs: the full eight take ~3 min more
here and test nothing else (`make demo` runs them)."""


def run_retrainer(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`retrainer ARGS` in `cwd`, the environment plus `env`; its exit code and output, never raised."""
    command = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@dataclass(frozen=True)
class DemoRun:
    """A finished `retrainer demo`: its exit code and output, and the folder it ran in."""

    result: subprocess.CompletedProcess
    cwd: Path

    @property
    def workdir(self) -> Path:
        """The demo's own folder (reports, the local copy of the production model, the S3 data)."""
        return self.cwd / DEMO_WORKDIR

    def production_models(self) -> list[Path]:
        """The production model folders the demo downloaded (one when it succeeded)."""
        return sorted((self.workdir / "production-model").iterdir())


def run_short_demo(cwd: Path, env: dict[str, str] | None = None) -> DemoRun:
    """Both demo cycles on small batches (150 then 60 tickets) with the short recipe, in `cwd`."""
    result = run_retrainer(
        "demo",
        "--workdir",
        DEMO_WORKDIR,
        "--first-batch",
        "150",
        "--second-batch",
        "60",
        cwd=cwd,
        env={**SHORT_RECIPE, **(env or {})},
    )
    return DemoRun(result=result, cwd=cwd)
