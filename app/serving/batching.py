"""Micro-batching: concurrent requests' tickets are scored together, in one worker thread.

Each request puts one job (its texts) on a queue. A batch is formed from whole jobs: it is scored when
`max_batch` tickets are waiting or `max_wait_s` has passed since its first job arrived. The model runs in
a single worker thread, so the event loop keeps accepting and answering while it scores. The model is
taken once, when a batch starts: every ticket of a request is scored by that one version (a request is
never split across batches).
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.serving.production import ServedModel


class NoModelError(Exception):
    """No model is loaded yet (the request is answered 503)."""


@dataclass(frozen=True)
class Scored:
    """A request's answer: the version that scored it and one row of probabilities per text."""

    version: str
    probabilities: list[list[float]]


@dataclass
class _Job:
    texts: list[str]
    answer: asyncio.Future


class MicroBatcher:
    """Scores texts in batches across concurrent callers of `score` (start it in the running loop)."""

    def __init__(
        self,
        current_model: Callable[[], ServedModel | None],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._current_model = current_model
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start forming batches (call from the event loop that will call `score`)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop forming batches; a batch being scored is finished first."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def score(self, texts: list[str]) -> Scored:
        """The probabilities of `texts`, scored with other requests' texts; raises `NoModelError`."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.answer

    async def _run(self) -> None:
        while True:
            jobs = await self._next_batch()
            await self._score(jobs)

    async def _next_batch(self) -> list[_Job]:
        """Whole jobs, from the first waiting one until `max_batch` tickets or `max_wait_s` passed."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        size = len(jobs[0].texts)
        deadline = loop.time() + self._max_wait_s
        while size < self._max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _score(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.answer.done()]  # a caller that went away needs no answer
        if not jobs:
            return
        model = self._current_model()  # one version for the whole batch
        if model is None:
            _fail(jobs, NoModelError())
            return
        texts = [text for job in jobs for text in job.texts]
        self._on_batch(len(texts))
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(
                self._executor, model.scoring.probabilities, texts
            )
        except Exception as error:
            _fail(jobs, error)
            return
        rows = probabilities.tolist()
        start = 0
        for job in jobs:
            if not job.answer.done():
                job.answer.set_result(Scored(model.version, rows[start : start + len(job.texts)]))
            start += len(job.texts)


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.answer.done():
            job.answer.set_exception(error)
