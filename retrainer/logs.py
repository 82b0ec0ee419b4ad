"""Logging that lands in the Prefect run logs inside a run, and in the standard logger outside."""

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current flow/task run's logger, or the ``retrainer`` logger when not in a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("retrainer")
