"""How plain functions become Prefect tasks: one policy for retries, stated once."""

from collections.abc import Callable

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

READ_RETRY_DELAYS_S = [1, 5, 15]


def read_task(fn: Callable, name: str) -> Task:
    """A task for idempotent I/O (a read, or deleting run scratch): retried with back-off on transient
    failures."""
    return task(
        fn,
        name=name,
        retries=len(READ_RETRY_DELAYS_S),
        retry_delay_seconds=READ_RETRY_DELAYS_S,
        cache_policy=NO_CACHE,
    )


def once_task(fn: Callable, name: str) -> Task:
    """A task that runs once: writes whose retry could hide a lost race, and compute (training)."""
    return task(fn, name=name, cache_policy=NO_CACHE)
