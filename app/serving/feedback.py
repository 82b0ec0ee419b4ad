"""Agents' labels, written to ``incoming/feedback/`` as JSON Lines batches the nightly run ingests.

Group commit: records arriving within `feedback_max_wait_ms` (at most `feedback_max_batch`) are written
as one new object, ``<incoming>feedback/<YYYY-MM-DD>/<stamp>-<uuid>.jsonl``, with If-None-Match, and each
record is acknowledged only after that write succeeded. What a crash can lose: records not yet
acknowledged (their callers got no 202 and send again); an acknowledged record is in the store.
"""

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from retrainer.storage import ObjectStore
from tasks.registry import utc_stamp

FEEDBACK_FOLDER = "feedback/"


@dataclass(frozen=True)
class FeedbackRecord:
    """One agent's label for a ticket (the label canonical)."""

    ticket_id: str
    text: str
    label: str
    created_at: str

    def as_json_line(self) -> str:
        """The record as one JSON Lines line (no newline)."""
        return json.dumps(
            {
                "ticket_id": self.ticket_id,
                "text": self.text,
                "label": self.label,
                "created_at": self.created_at,
            },
            ensure_ascii=False,
        )


def feedback_record(ticket_id: str, text: str, label: str) -> FeedbackRecord:
    """A record stamped now (UTC)."""
    return FeedbackRecord(ticket_id, text, label, datetime.now(UTC).isoformat())


@dataclass
class _Pending:
    record: FeedbackRecord
    written: asyncio.Future


class FeedbackWriter:
    """Group-commits feedback records to the store (start it in the running loop)."""

    def __init__(self, store: ObjectStore, max_wait_s: float, max_batch: int) -> None:
        self._store = store
        self._max_wait_s = max_wait_s
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start writing (call from the event loop that will call `submit`)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="feedback-writer")

    async def stop(self) -> None:
        """Stop writing. The server calls it once its requests are answered (or `drain_s` passed), so no
        acknowledged record is waiting; a write a thread has started still completes in the store."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, record: FeedbackRecord) -> str:
        """The key of the object holding `record`, once it is written (a failed write raises)."""
        pending = _Pending(record, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.written

    async def _run(self) -> None:
        while True:
            group = await self._next_group()
            try:
                key = await asyncio.to_thread(self._write, [pending.record for pending in group])
            except Exception as error:
                for pending in group:
                    if not pending.written.done():
                        pending.written.set_exception(error)
                continue
            for pending in group:
                if not pending.written.done():
                    pending.written.set_result(key)

    async def _next_group(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        group = [await self._queue.get()]
        deadline = loop.time() + self._max_wait_s
        while len(group) < self._max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                group.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return group

    def _write(self, records: list[FeedbackRecord]) -> str:
        now = datetime.now(UTC)
        key = (
            f"{self._store.settings.incoming_prefix}{FEEDBACK_FOLDER}{now:%Y-%m-%d}/"
            f"{utc_stamp()}-{uuid.uuid4().hex}.jsonl"
        )
        body = "".join(record.as_json_line() + "\n" for record in records).encode()
        self._store.put(key, body, if_none_match=True, content_type="application/x-ndjson")
        return key
