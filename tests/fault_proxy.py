"""A fault-injecting S3 proxy of the project's own, on loopback, in front of SeaweedFS.

Point a store at `proxy.endpoint_url` instead of the server's: every request is forwarded verbatim
(method, path, query, headers and body, the ``Host`` header as the client sent it, so SigV4 signatures
made for the proxy's address still verify upstream), unless a rule chosen by a predicate on the request
does something else to it::

    with FaultProxy(local_s3.endpoint_url) as proxy:
        store = S3Store(S3Settings(endpoint_url=proxy.endpoint_url, bucket=...))
        rule = proxy.drop_response(when(method="PUT", key="models/production.json"))  # once
        proxy.fail(when(method="GET", prefix="datasets/"), times=3)     # 503 SlowDown, not forwarded
        gate = threading.Event()
        proxy.delay(when(key="state/manifest.json", conditional=True), until=gate)  # held until set
        proxy.hang(when(method="GET"), times=None)                         # accepted, never answered
        proxy.wait_for(when(method="DELETE"), timeout_s=30)                # a request arrived
        rule.arrived.wait(30); rule.hits                                   # matched, how often

Rules (first matching rule with hits left wins; `times` is how many requests it takes, None: every one):

- `fail(match, status=503, code="SlowDown")`: answer an S3 error document, forward nothing;
- `delay(match, seconds=None, until=None)`: hold the request `seconds`, or until the `threading.Event`
  `until` is set (at most `seconds`, default `max_hold_s`), then forward it;
- `drop_response(match)`: forward it (the write happens upstream), then close the connection without
  answering: the client sees a lost response;
- `hang(match)`: accept it and never answer (until the proxy stops or `max_hold_s` passes), for timeouts.

`when(method=, key=, prefix=, bucket=, query=, conditional=, header=)` builds a predicate; any callable
taking a `Request` is one too. `proxy.requests` records every request seen as `Seen(request, outcome)`,
outcome the upstream status (int) or "failed"/"dropped"/"hung". The proxy binds 127.0.0.1 only and stops
itself after `lifetime_s` (default 15 minutes), so a forgotten one cannot outlive a test run by much.
"""

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it (path-style S3 addressing: ``/bucket/key``)."""

    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased

    @property
    def conditional(self) -> bool:
        """True for a conditional write or read (If-Match / If-None-Match)."""
        return "if-match" in self.headers or "if-none-match" in self.headers


@dataclass
class Seen:
    """A request and what became of it: the upstream status, or "failed", "dropped", "hung"."""

    request: Request
    outcome: int | str | None = None


Match = Callable[[Request], bool]


def when(
    method: str | None = None,
    key: str | None = None,
    prefix: str | None = None,
    bucket: str | None = None,
    query: str | None = None,
    conditional: bool | None = None,
    header: str | None = None,
) -> Match:
    """A predicate on requests: every given criterion must hold (`query`/`header`: that name is present)."""

    def matches(request: Request) -> bool:
        return (
            (method is None or request.method == method)
            and (key is None or request.key == key)
            and (prefix is None or request.key.startswith(prefix))
            and (bucket is None or request.bucket == bucket)
            and (query is None or query in request.query)
            and (conditional is None or request.conditional == conditional)
            and (header is None or header.lower() in request.headers)
        )

    return matches


@dataclass
class Rule:
    """What to do to matching requests, and how often; `arrived` is set at the first match."""

    action: str  # fail | delay | drop_response | hang
    match: Match
    times: int | None = 1
    seconds: float | None = None
    until: threading.Event | None = None
    status: int = 503
    code: str = "SlowDown"
    hits: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)

    def take(self, request: Request) -> bool:
        """Count `request` against this rule if it matches and has hits left (caller holds the lock)."""
        if (self.times is not None and self.hits >= self.times) or not self.match(request):
            return False
        self.hits += 1
        self.arrived.set()
        return True


class FaultProxy:
    """A loopback HTTP proxy to `upstream_url` that applies fault rules; a context manager."""

    def __init__(self, upstream_url: str, *, lifetime_s: float = 900.0, max_hold_s: float = 120.0) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self.lifetime_s = lifetime_s
        self.max_hold_s = max_hold_s
        self.requests: list[Seen] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._seen_changed = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        """Serve in a background thread; stops itself after `lifetime_s`."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving; held and hung requests are released (hung ones closed unanswered)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- rules ---------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add `rule` after the existing ones; returns it (its `hits` and `arrived` tell what it did)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, match: Match, *, times: int | None = 1, status: int = 503, code: str = "SlowDown") -> Rule:
        """Answer matching requests with an S3 error (`status`, `code`) without forwarding them."""
        return self.add(Rule("fail", match, times, status=status, code=code))

    def delay(
        self,
        match: Match,
        *,
        seconds: float | None = None,
        until: threading.Event | None = None,
        times: int | None = 1,
    ) -> Rule:
        """Hold matching requests `seconds`, or until `until` is set, then forward them."""
        if seconds is None and until is None:
            raise ValueError("delay needs seconds or an event to wait for")
        return self.add(Rule("delay", match, times, seconds=seconds, until=until))

    def drop_response(self, match: Match, *, times: int | None = 1) -> Rule:
        """Forward matching requests, then close the connection without answering."""
        return self.add(Rule("drop_response", match, times))

    def hang(self, match: Match, *, times: int | None = None) -> Rule:
        """Accept matching requests and never answer them."""
        return self.add(Rule("hang", match, times))

    def clear(self) -> None:
        """Remove every rule (requests already held keep their fate)."""
        with self._lock:
            self._rules.clear()

    # -- what was seen -------------------------------------------------------------------------

    def seen(self, match: Match = lambda request: True) -> list[Seen]:
        """The recorded requests that `match`, in arrival order."""
        with self._lock:
            return [seen for seen in self.requests if match(seen.request)]

    def wait_for(self, match: Match, *, count: int = 1, timeout_s: float = 60.0) -> list[Seen]:
        """Block until `count` requests matching `match` arrived; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._seen_changed:
            while True:
                found = [seen for seen in self.requests if match(seen.request)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} expected requests arrived in {timeout_s}s")
                self._seen_changed.wait(left)

    # -- used by the handler -------------------------------------------------------------------

    def _arrive(self, request: Request) -> tuple[Seen, Rule | None]:
        with self._seen_changed:
            seen = Seen(request)
            self.requests.append(seen)
            rule = next((rule for rule in self._rules if rule.take(request)), None)
            self._seen_changed.notify_all()
            return seen, rule

    def _hold(self, seconds: float | None, until: threading.Event | None) -> None:
        limit = min(seconds if seconds is not None else self.max_hold_s, self.max_hold_s)
        if until is None:
            self._stopped.wait(limit)
            return
        deadline = time.monotonic() + limit
        while not until.is_set() and not self._stopped.is_set() and time.monotonic() < deadline:
            until.wait(0.05)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    timeout = 120  # an idle client connection is closed after this

    def log_message(self, format, *args) -> None:  # quiet: the tests read `proxy.requests`
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._read_body()
        request = _parse(self.command, self.path, self.headers)
        seen, rule = proxy._arrive(request)
        action = rule.action if rule else "forward"
        if action == "fail":
            seen.outcome = "failed"
            self._answer_error(rule.status, rule.code)
            return
        if action == "hang":
            seen.outcome = "hung"
            proxy._hold(None, None)
            self._drop()
            return
        if action == "delay":
            proxy._hold(rule.seconds, rule.until)
        status, headers, payload = self._forward(proxy, body)
        if action == "drop_response":
            seen.outcome = "dropped"
            self._drop()
            return
        seen.outcome = status
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 (http.server's names)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_raw()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked_raw(self) -> bytes:
        """The chunked body with its framing, as sent (forwarded as it came)."""
        raw = bytearray()
        while True:
            line = self.rfile.readline()
            raw += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then an empty line
                    trailer = self.rfile.readline()
                    raw += trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return bytes(raw)
            raw += self.rfile.read(size + 2)

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.max_hold_s)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() != "expect":  # not signed by SigV4; the proxy already answered it
                    connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
            payload = response.read()
            headers = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP_BY_HOP]
            if self.command != "HEAD":  # a HEAD's Content-Length is the object's size: keep it
                headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
                headers.append(("Content-Length", str(len(payload))))
            return response.status, headers, payload
        finally:
            connection.close()

    def _answer_error(self, status: int, code: str) -> None:
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        """Close the client's connection without a byte of answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone already
            self.connection.shutdown(socket.SHUT_RDWR)


def _parse(method: str, path: str, headers) -> Request:
    parts = urlsplit(path)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    return Request(
        method=method,
        bucket=bucket,
        key=key,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers={name.lower(): value for name, value in headers.items()},
    )
