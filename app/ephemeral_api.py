"""Prefect's ephemeral API server, started so that it dies with the command that started it.

Without ``PREFECT_API_URL`` Prefect starts a ``uvicorn`` subprocess on first use and stops it only at a
normal exit (``atexit``), so a SIGKILLed ``retrainer run`` left it running. On Linux the child is given
a parent-death signal (``PR_SET_PDEATHSIG``). The kernel sends it when the *thread* that forked the
child ends, and Prefect starts the server from whichever thread first needs the API (often a
background worker), so it is started here, from the main thread, before the flow runs.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
from functools import partial

from prefect.server.api import server as server_module
from prefect.settings import PREFECT_API_URL

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def start_ephemeral_api_bound_to_this_process() -> bool:
    """Start the ephemeral API now, as a child that gets SIGTERM when this process dies.

    Returns False and does nothing when a Prefect API is configured (``PREFECT_API_URL``), off Linux,
    off the main thread, or when an ephemeral server is already running.
    """
    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    instances = server_module.SubprocessASGIServer._instances
    existing = instances.get(None)
    if existing is not None and existing.running:
        return False
    instances.pop(None, None)  # a stopped default instance: ours replaces it
    # Constructed without a port, it is registered as Prefect's default instance, so every later
    # `SubprocessASGIServer()` inside Prefect finds this running server instead of starting another.
    ServerDyingWithParent().start()
    return True


class ServerDyingWithParent(server_module.SubprocessASGIServer):
    """Prefect's ephemeral server whose uvicorn child gets PR_SET_PDEATHSIG(SIGTERM)."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        # Prefect builds the command and environment; only its Popen call gets the preexec hook.
        original = server_module.subprocess
        server_module.subprocess = _SubprocessWithParentDeath(os.getpid())
        try:
            return super()._run_uvicorn_command()
        finally:
            server_module.subprocess = original


class _SubprocessWithParentDeath:
    """The `subprocess` module as Prefect's server module sees it while starting uvicorn."""

    def __init__(self, parent_pid: int) -> None:
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
        self._parent_pid = parent_pid

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def Popen(self, *args, **kwargs) -> subprocess.Popen:  # noqa: N802 (the name Prefect calls)
        return subprocess.Popen(
            *args, preexec_fn=partial(_die_with_parent, self._prctl, self._parent_pid), **kwargs
        )


def _die_with_parent(prctl, parent_pid: int) -> None:
    """In the forked child, before exec: ask for SIGTERM when the parent (thread) dies."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: nobody would signal us
        os._exit(1)
