"""The HTTP API (FastAPI): /v1/classify, /v1/feedback, /healthz, /readyz, /metrics; OpenAPI at /docs.

Nothing a client sends is echoed in an error: a 422 names the field and the problem, never the value.
"""

import secrets
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field

from app.serving.batching import MicroBatcher, NoModelError
from app.serving.feedback import FeedbackWriter, feedback_record
from app.serving.metrics import ServeMetrics
from app.serving.production import NO_MODEL_YET, ProductionFollower
from retrainer.core.labels import LABELS
from retrainer.core.validation import canonical_label
from retrainer.settings import RetrainerSettings
from retrainer.storage import ObjectStore

API_VERSION = "v1"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("the text is blank")
    return text


TicketText = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
"""A ticket's title and body: not empty, not only whitespace."""


class Ticket(BaseModel):
    """A ticket to classify."""

    id: str = Field(min_length=1, max_length=200, description="The helpdesk's ticket id (echoed back).")
    text: TicketText = Field(description="Title and body as the helpdesk holds them.")


class ClassifyRequest(BaseModel):
    """Tickets to classify (1 to `max_tickets_per_request`)."""

    tickets: list[Ticket] = Field(min_length=1, description="One or more tickets.")


class Prediction(BaseModel):
    """One ticket's answer."""

    id: str
    label: str = Field(description="The most probable label.")
    confidence: float = Field(description="Its probability.")
    probabilities: dict[str, float] = Field(description="Every label's probability.")
    model_version: str


class ClassifyResponse(BaseModel):
    """Every ticket's answer, all from one model version."""

    model_version: str = Field(description="The one version that scored every ticket of this request.")
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    """An agent's label for a ticket (a confirmation or a correction)."""

    ticket_id: str = Field(min_length=1, max_length=200)
    text: TicketText
    label: str = Field(min_length=1, description=f"One of {', '.join(LABELS)} (or a configured alias).")


class FeedbackResponse(BaseModel):
    """The record is stored (in the object named)."""

    accepted: bool
    object: str = Field(description="The store key of the JSON Lines object holding the record.")


def create_app(settings: RetrainerSettings, store: ObjectStore) -> FastAPI:
    """The service: follows production in `store` and answers with the model it holds."""
    serve = settings.serve
    metrics = ServeMetrics()
    follower = ProductionFollower(
        store,
        settings,
        on_serving=metrics.serving,
        on_rejected=lambda version, reason: metrics.rejections.labels(version=version).inc(),
    )
    batcher = MicroBatcher(
        lambda: follower.current, serve.max_batch, serve.max_wait_ms / 1000, metrics.batch_size.observe
    )
    feedback = FeedbackWriter(store, serve.feedback_max_wait_ms / 1000, serve.feedback_max_batch)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        feedback.start()
        follower.start()
        try:
            yield
        finally:
            follower.stop()
            await batcher.stop()
            await feedback.stop()

    app = FastAPI(
        title="ticket-retrainer",
        summary="Classifies support tickets with the production model and takes agents' labels back.",
        version=API_VERSION,
        lifespan=lifespan,
    )
    app.state.follower = follower
    app.state.metrics = metrics
    app.add_middleware(_BodyLimit, limit=serve.max_body_bytes)
    known = {f"/{API_VERSION}/classify", f"/{API_VERSION}/feedback", *OPEN_PATHS}
    app.add_middleware(_RequestMetrics, metrics=metrics, known=known)  # outermost: counts the 413s too
    _answer_invalid_requests_without_their_input(app)
    token_required = _bearer_token(serve.token.get_secret_value() if serve.token else None)

    @app.post(f"/{API_VERSION}/classify", response_model=ClassifyResponse, dependencies=[token_required])
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Label, confidence and probabilities of each ticket, all from one model version."""
        if len(request.tickets) > serve.max_tickets_per_request:
            raise HTTPException(
                422,
                f"too many tickets: {len(request.tickets)} (at most {serve.max_tickets_per_request} "
                "per request)",
            )
        try:
            scored = await batcher.score([ticket.text for ticket in request.tickets])
        except NoModelError:
            raise HTTPException(503, NO_MODEL_YET) from None
        predictions = [
            _prediction(ticket.id, row, scored.version, serve.confidence_threshold, metrics)
            for ticket, row in zip(request.tickets, scored.probabilities, strict=True)
        ]
        return ClassifyResponse(model_version=scored.version, predictions=predictions)

    @app.post(
        f"/{API_VERSION}/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        dependencies=[token_required],
    )
    async def take_feedback(request: FeedbackRequest) -> FeedbackResponse:
        """Store an agent's label for a ticket; answered once it is written to the store."""
        label = canonical_label(request.label, settings.ingest.label_aliases)
        if label is None:
            aliases = ", ".join(sorted(settings.ingest.label_aliases))
            raise HTTPException(
                422, f"unknown label: expected one of {', '.join(LABELS)} (or an alias: {aliases})"
            )
        try:
            key = await feedback.submit(feedback_record(request.ticket_id, request.text, label))
        except Exception as error:
            raise HTTPException(503, f"feedback not stored, send it again ({type(error).__name__})") from None
        return FeedbackResponse(accepted=True, object=key)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive (the process answers)."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 with the version when a model is loaded; 503 with the reason before."""
        current, rejected = follower.current, follower.rejected
        body: dict = {"ready": current is not None, "model_version": current.version if current else None}
        if current is None:
            body["reason"] = follower.waiting_reason
        if rejected is not None:
            body["rejected"] = {"version": rejected.version, "reason": rejected.reason}
        return JSONResponse(body, status_code=200 if current is not None else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app


def _prediction(
    ticket_id: str, row: list[float], version: str, threshold: float, metrics: ServeMetrics
) -> Prediction:
    best = max(range(len(LABELS)), key=row.__getitem__)
    metrics.predictions.labels(label=LABELS[best]).inc()
    if row[best] < threshold:
        metrics.low_confidence.inc()
    return Prediction(
        id=ticket_id,
        label=LABELS[best],
        confidence=row[best],
        probabilities=dict(zip(LABELS, row, strict=True)),
        model_version=version,
    )


def _bearer_token(token: str | None):
    """A dependency refusing (401) a request without `Authorization: Bearer <token>`; none when unset."""
    scheme = HTTPBearer(auto_error=False)

    async def require(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        given = credentials.credentials if credentials else ""
        if token is not None and not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return Depends(require)


def _answer_invalid_requests_without_their_input(app: FastAPI) -> None:
    """FastAPI's own 422 repeats the input it refused (ticket text): this one names field and problem."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem_line(problem) for problem in error.errors()[:5]]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)


def _problem_line(problem: dict) -> str:
    """Where and what, from pydantic's error: its location and message, never its `input`."""
    if problem["type"] == "json_invalid":
        return "the body is not valid JSON"
    where = ".".join(str(part) for part in problem["loc"][1:]) or "body"
    return f"{where}: {problem['msg']}"


class _BodyTooLargeError(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class _BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by its Content-Length before anything is read,
    or while it streams in (a chunked body, or one longer than it said)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            too_large = length.isdigit()
            detail = _BodyTooLargeError(self.limit).detail if too_large else "invalid Content-Length"
            await JSONResponse({"detail": detail}, status_code=413 if too_large else 400)(
                scope, receive, send
            )
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLargeError(self.limit)  # inside the endpoint's body read: answered 413
            return message

        await self.app(scope, counted, send)


class _RequestMetrics:
    """ASGI middleware: requests by endpoint and status, and their latency (unknown paths: `other`)."""

    def __init__(self, app, metrics: ServeMetrics, known: set[str]) -> None:
        self.app, self.metrics, self.known = app, metrics, known

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.known else "other"
        started = time.perf_counter()
        status = 500

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
