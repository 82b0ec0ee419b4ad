"""Run the service with uvicorn in this process until SIGTERM or Ctrl+C.

On SIGTERM uvicorn stops accepting connections, answers the requests in flight for at most
`drain_s` seconds, then runs the application's shutdown (the production follower stops) and returns.
"""

import logging
import signal
import threading
from contextlib import contextmanager

import uvicorn

from app.serving.api import create_app
from retrainer.settings import RetrainerSettings
from retrainer.storage import open_store


def run_service(settings: RetrainerSettings, host: str, port: int) -> None:
    """Serve on `host`:`port` until stopped; the store's bucket is checked first (a one-line error)."""
    store = open_store(settings.s3)
    store.require_bucket()
    _log_to_stderr()
    config = uvicorn.Config(
        create_app(settings, store),
        host=host,
        port=port,
        timeout_graceful_shutdown=settings.serve.drain_s,
        access_log=False,  # paths and statuses are in /metrics; one line per request is noise here
        log_level="info",
    )
    with _stop_signals_end_cleanly():
        uvicorn.Server(config).run()


def _log_to_stderr() -> None:
    """The service's own lines (`app.serving.*`: swaps, rejected versions) beside uvicorn's: through the
    root logger's handlers where some are set (Prefect's console handler, once Prefect is imported)."""
    logger = logging.getLogger("app.serving")
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


@contextmanager
def _stop_signals_end_cleanly():
    """uvicorn, once drained, raises the signal that stopped it again for the handler found before it;
    a no-op handler here makes that the clean end of the command (exit 0) instead of a kill by signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {stop: signal.signal(stop, _stopped) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def _stopped(signum, frame) -> None:
    """The service has stopped already (see `_stop_signals_end_cleanly`)."""
