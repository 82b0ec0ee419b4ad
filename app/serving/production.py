"""Following production: a background thread polls the registry's production pointer and swaps the model.

The pointer is read with a conditional GET on its ETag (`ObjectStore.get_if_changed`), so an unchanged
pointer costs one small request. When it names another version, that version is fetched (digest-checked,
`tasks.registry.fetch_model`), loaded, and checked with the publish smoke test's canary tickets
(`tasks.smoke.canary_verdict`); only then does one reference assignment swap it in. A request holds the
`ServedModel` its batch started with, so it finishes on that model; the old model is freed once the last
such batch ends. A version that fails is not swapped in and not tried again until the pointer changes.
"""

import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from retrainer.core.scoring import ScoringModel, load_scoring_model
from retrainer.records import ProductionPointer
from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore
from tasks.registry import fetch_model, pointer_key
from tasks.smoke import canary_texts, canary_verdict

_log = logging.getLogger(__name__)
NO_MODEL_YET = "no model loaded yet"


@dataclass(frozen=True)
class ServedModel:
    """A loaded, checked model version."""

    version: str
    scoring: ScoringModel


@dataclass(frozen=True)
class Rejection:
    """A version that was not swapped in, and why."""

    version: str
    reason: str


class ProductionFollower:
    """Holds the model being served and keeps it the production one (`start` runs the polling thread)."""

    def __init__(self, store: ObjectStore, settings: RetrainerSettings, on_serving=None, on_rejected=None):
        """`on_serving(version, replaced_version)` and `on_rejected(version, reason)` are told of each swap
        and each rejected version (the metrics)."""
        self._store = store
        self._settings = settings
        self._on_serving = on_serving or (lambda version, replaced: None)
        self._on_rejected = on_rejected or (lambda version, reason: None)
        self._etag: str | None = None
        self._unreachable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: ServedModel | None = None
        self.rejected: Rejection | None = None
        self.waiting_reason = NO_MODEL_YET

    def start(self) -> None:
        """Start the polling thread (the first poll loads the production model)."""
        self._thread = threading.Thread(target=self._follow, name="production-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; a load in progress is waited for up to `timeout_s`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._settings.serve.poll_interval_s)

    def poll_once(self) -> None:
        """Read the pointer if it changed; load, check and swap in the version it names."""
        key = pointer_key(self._store)
        try:
            found = self._store.get_if_changed(key, self._etag)
        except KeyError:
            self.waiting_reason = f"no model in production yet ({self._store.uri(key)} does not exist)"
            return
        except Exception as error:  # the store is down: keep serving, ask again next time
            if not self._unreachable:  # one line per outage, not one per poll
                where = self._store.uri(key)
                _log.warning("cannot read the production pointer %s: %s", where, _one_line(error))
            self._unreachable = True
            return
        if self._unreachable:
            _log.info("the production pointer %s can be read again", self._store.uri(key))
            self._unreachable = False
        if found is None:
            return
        data, self._etag = found
        try:
            version = ProductionPointer.model_validate_json(data).version
        except ValueError as error:
            self._reject("unknown", f"the production pointer cannot be read: {_one_line(error)}")
            return
        if self.current is None or version != self.current.version:
            self._load(version)

    def _load(self, version: str) -> None:
        if self.current is None:
            self.waiting_reason = f"loading {version}"
        try:
            loaded = self._loaded_and_checked(version)
        except Exception as error:  # any failure to fetch, load or predict: the old model keeps serving
            self._reject(version, _one_line(error))
            return
        replaced = self.current.version if self.current else None
        self.current = loaded  # the swap: one reference assignment
        self.rejected = None
        self._on_serving(version, replaced)
        _log.info("serving model %s%s", version, f" (replaced {replaced})" if replaced else "")
        _release_memory()

    def _loaded_and_checked(self, version: str) -> ServedModel:
        settings = self._settings
        model_dir: Path = fetch_model(self._store, version, settings.model_cache_dir)
        scoring = load_scoring_model(model_dir, settings.training.max_length)
        texts = canary_texts()
        verdict = canary_verdict(
            scoring.probabilities(texts), scoring.probabilities(texts), settings.gate.min_canary_accuracy
        )
        if not verdict.passed:
            raise ValueError("; ".join(verdict.reasons))
        return ServedModel(version, scoring)

    def _reject(self, version: str, reason: str) -> None:
        self.rejected = Rejection(version, reason)
        if self.current is None:
            self.waiting_reason = f"model {version} was not loaded: {reason}"
        _log.error("model %s not swapped in: %s", version, reason)
        self._on_rejected(version, reason)


def _release_memory() -> None:
    """Give the replaced model's memory back (it is freed once no batch holds it any more)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
