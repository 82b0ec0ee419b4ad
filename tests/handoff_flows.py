"""A stand-in for the fine-tune flow that a process worker runs in tests/test_handoff.py: it only sleeps."""

import time

from prefect import flow


@flow(name="handoff-sleeper")
def sleeper(seconds: float = 0.0) -> float:
    """Sleep `seconds` (a fine-tune run that occupies its worker that long); returns them."""
    time.sleep(seconds)
    return seconds
