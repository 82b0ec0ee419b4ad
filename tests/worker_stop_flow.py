"""A flow for the worker-stop tests: it marks that it started, sleeps, then marks that it finished."""

import signal
import time
from pathlib import Path

from prefect import flow


@flow
def sleep_then_mark(seconds: float, marker: str, ignore_sigterm: bool = False) -> None:
    """Write `<marker>.started`, sleep `seconds`, then write `marker`; optionally deaf to SIGTERM (as a
    process stuck in native code is), so that only SIGKILL stops it."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(f"{marker}.started").write_text("started")
    time.sleep(seconds)
    Path(marker).write_text("finished")
