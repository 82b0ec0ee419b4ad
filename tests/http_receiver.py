"""A real HTTP server on 127.0.0.1 that records what is posted to it (for notification tests)."""

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Collects the JSON bodies POSTed to it; use as a context manager."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        received = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> "Receiver":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A `Receiver` behind a saved CustomWebhookNotificationBlock, named by `receiver.block` (needs a
    Prefect API)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock  # `make test-fast` skips it

    block_name = f"alerts-{uuid.uuid4().hex[:8]}"
    with Receiver() as receiver:
        CustomWebhookNotificationBlock(
            name="retrainer",
            url=receiver.url,
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
            allow_private_urls=True,
        ).save(block_name)
        receiver.block = f"custom-webhook/{block_name}"
        yield receiver
