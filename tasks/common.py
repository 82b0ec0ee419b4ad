"""How plain functions become Prefect tasks: one policy for retries, stated once; the logger that lands
in the Prefect run log inside a run (the standard one outside); and how what the ML core logs reaches it.

Every task module imports this one, so it imports neither torch nor transformers (the Trainer's progress
callback lives in `tasks.training_progress`)."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from retrainer.storage import InvalidKeyError

READ_RETRY_DELAYS_S = [1, 5, 15]


class PermanentError(Exception):
    """A failure that asking again cannot mend (e.g. a corrupt object): a read task fails at once."""


def read_task(fn: Callable, name: str) -> Task:
    """A task for idempotent I/O (a read, or deleting run scratch): retried with back-off on transient
    failures (anything but a `PermanentError` or a key the store cannot hold, `InvalidKeyError`)."""
    return task(
        fn,
        name=name,
        retries=len(READ_RETRY_DELAYS_S),
        retry_delay_seconds=READ_RETRY_DELAYS_S,
        retry_condition_fn=_worth_retrying,
        cache_policy=NO_CACHE,
    )


def _worth_retrying(task_, task_run, state) -> bool:
    try:
        state.result()
    except (PermanentError, InvalidKeyError):
        return False
    except Exception:  # any other failure may be transient
        return True
    return True


def once_task(fn: Callable, name: str) -> Task:
    """A task that runs once: writes whose retry could hide a lost race, and compute (training)."""
    return task(fn, name=name, cache_policy=NO_CACHE)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current flow/task run's logger, or the ``retrainer`` logger when not in a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("retrainer")


class _ToRunLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        run_logger().log(record.levelno, record.getMessage(), exc_info=record.exc_info)


@contextmanager
def core_logs_in_run_log() -> Iterator[None]:
    """While the block runs, what `retrainer.core` logs goes to `run_logger()`: the current run's log
    (the core logs to the standard `logging` and knows nothing of Prefect).

    Every level is handed over and the run logger applies its own, as if the core had called it. The
    records do not propagate meanwhile, so a line is shown once, as the run's.
    """
    core = logging.getLogger("retrainer.core")
    handler, level, propagate = _ToRunLog(), core.level, core.propagate
    core.addHandler(handler)
    core.setLevel(logging.DEBUG)
    core.propagate = False
    try:
        yield
    finally:
        core.removeHandler(handler)
        core.setLevel(level)
        core.propagate = propagate
