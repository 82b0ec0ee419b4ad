"""The service's parts on their own (tests/test_serving.py tests the running service): the micro-batcher
scores concurrent requests together, each from one model version; refused requests never echo their text."""

import asyncio
import json

import pytest
import torch
from fastapi.testclient import TestClient

from app.serving.api import create_app
from app.serving.batching import MicroBatcher
from app.serving.production import ServedModel
from retrainer.core.scoring import load_scoring_model
from retrainer.settings import RetrainerSettings, S3Settings, ServeSettings
from retrainer.storage import open_store
from tests.registry_helpers import labelled_copy

SECRET_TEXT = "my password is hunter2 and my card is 4111 1111 1111 1111"


def test_concurrent_requests_are_scored_in_one_batch_each_with_its_own_rows(tiny_model_dir, tmp_path):
    model = ServedModel("m-1", load_scoring_model(labelled_copy(tiny_model_dir, tmp_path / "m"), 128))
    requests = [[f"ticket {n} crashes on save", "please add dark mode"][: 1 + n % 2] for n in range(6)]
    batches: list[int] = []

    async def score_all():
        batcher = MicroBatcher(lambda: model, max_batch=32, max_wait_s=0.2, on_batch=batches.append)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.score(texts) for texts in requests))
        finally:
            await batcher.stop()

    answers = asyncio.run(score_all())

    assert batches == [sum(map(len, requests))]  # one model call for all six requests
    for texts, answer in zip(requests, answers, strict=True):
        assert answer.version == "m-1"
        alone = model.scoring.probabilities(texts)  # rows of a random model differ by ~1e-5 between texts
        assert torch.allclose(torch.tensor(answer.probabilities), alone, rtol=0, atol=1e-6)


@pytest.fixture
def client_without_model(tmp_path):
    """The app on an empty local-folder store (no production model), with small limits."""
    store = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="empty"))
    store.ensure_bucket()
    settings = RetrainerSettings(
        work_dir=tmp_path / "work", serve=ServeSettings(max_tickets_per_request=2, max_body_bytes=2000)
    )
    with TestClient(create_app(settings, store)) as client:
        yield client


def test_refused_requests_never_echo_the_ticket_text(client_without_model):
    too_many = {"tickets": [{"id": f"T-{n}", "text": SECRET_TEXT} for n in range(3)]}
    invalid = {"tickets": [{"id": "T-1", "text": SECRET_TEXT, "oops": 1}, {"text": SECRET_TEXT}]}
    unknown_label = {"ticket_id": "T-1", "text": SECRET_TEXT, "label": SECRET_TEXT}

    answers = [
        client_without_model.post("/v1/classify", json=too_many),
        client_without_model.post("/v1/classify", json=invalid),
        client_without_model.post("/v1/classify", content=SECRET_TEXT.encode()),
        client_without_model.post("/v1/feedback", json=unknown_label),
    ]

    assert [answer.status_code for answer in answers] == [422, 422, 422, 422]
    for answer in answers:
        assert "hunter2" not in answer.text and "4111" not in answer.text
        assert set(answer.json()) == {"detail"}
    assert "too many tickets: 3 (at most 2" in answers[0].json()["detail"]
    assert "tickets.1.id" in answers[1].json()["detail"]


def test_a_body_over_the_limit_is_refused_by_its_length_or_while_it_streams(client_without_model):
    body = json.dumps({"tickets": [{"id": "T-1", "text": "x" * 3000}]}).encode()

    declared = client_without_model.post("/v1/classify", content=body)
    streamed = client_without_model.post("/v1/classify", content=iter([body[:1000], body[1000:]]))
    small = {"tickets": [{"id": "T-1", "text": "hi"}]}
    before_a_model = client_without_model.post("/v1/classify", json=small)

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert declared.json() == streamed.json() == {"detail": "request body over 2000 bytes"}
    assert before_a_model.status_code == 503 and before_a_model.json() == {"detail": "no model loaded yet"}
    assert client_without_model.get("/readyz").status_code == 503
