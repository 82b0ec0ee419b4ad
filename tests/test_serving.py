"""`retrainer serve` as an operator runs it: the command in a process of its own on a free port, reading a
registry on the session's real SeaweedFS, answering over real HTTP (httpx), following the production
pointer while clients keep sending, refusing broken versions, and taking feedback that the next real
retrain run ingests. Models are the tiny random BERT shaped like a run's (input recipe, lexical half)."""

import json
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from flows.retrain import retrain
from retrainer.core.batch_files.formats import parse_batch
from retrainer.core.labels import LABELS
from retrainer.core.scoring import predict_probabilities
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import ObjectStore, S3Store
from tasks.manifest import read_manifest
from tasks.registry import fetch_model, read_production_pointer, rollback
from tasks.smoke import CANARY_TICKETS
from tests.demo_run import run_retrainer
from tests.registry_helpers import damage, promote
from tests.retrain_process import QUICK
from tests.serving_helpers import (
    POLL_INTERVAL_S,
    ContinuousClients,
    ServeProcess,
    metric_total,
    publish_served_version,
    read_metrics,
    start_serve,
    tickets,
)
from tests.tickets import drop_batch

TOKEN = "serving-test-token-5f2c"
LOAD_BUDGET_S = 10.0  # the tiny model fetches, loads and passes its canaries in ~1 s; slack for a busy CI box
FIRST_LOAD_BUDGET_S = 60.0  # a server's first model also imports the scoring stack (~20 s, busy 2 cores)
MARKER = "zebra-quokka-7731"  # a ticket text no error, log line or metric may repeat
TEXTS = [
    *(text for text, _ in CANARY_TICKETS),
    "Invoice missing, please send it to jane.doe@example.com or call +1 (555) 123-4567",
    "Export fails for https://acme.example.com/reports/42?token=abc and crashes the tab",
    "Le bouton « Enregistrer » ne fonctionne plus depuis la mise à jour 🙁",
    "Export fails\n<!-- describe the bug -->\n```\nTraceback (most recent call last):\n"
    + '  File "a.py", line 1\n```\n'
    + "It crashes for jane@example.com every single time. " * 40,
    "Help!",
]


@dataclass(frozen=True)
class Registry:
    """The module's bucket: two good versions, `first` promoted when the module starts."""

    s3: S3Settings
    store: ObjectStore
    first: str
    second: str
    scratch: Path

    def production(self) -> str:
        """The version the pointer names now."""
        return read_production_pointer(self.store)[0].version


@pytest.fixture(scope="module")
def registry(local_s3, tiny_model_dir, tmp_path_factory) -> Registry:
    s3 = S3Settings(endpoint_url=local_s3.endpoint_url, bucket=f"t-{uuid.uuid4().hex[:16]}")
    store = S3Store(s3)
    store.ensure_bucket()
    scratch = tmp_path_factory.mktemp("serving-registry")
    first = publish_served_version(store, tiny_model_dir, scratch)
    second = publish_served_version(store, tiny_model_dir, scratch, seed=1)
    promote(store, first, None)
    return Registry(s3, store, first, second, scratch)


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory) -> ServeProcess:
    """One `retrainer serve` with a bearer token for the module's tests, ready with `registry.first`."""
    serving = start_serve(registry.s3, tmp_path_factory.mktemp("serve"), token=TOKEN)
    try:
        serving.wait_serving(registry.first)
        yield serving
    finally:
        serving.stop()


def _classify(server: ServeProcess, texts: list[str], prefix: str = "T") -> dict:
    with server.client() as client:
        response = client.post("/v1/classify", json=tickets(texts, prefix))
    assert response.status_code == 200, response.text
    return response.json()


def _serving(server: ServeProcess) -> str:
    body = server.readiness()
    assert body["ready"] is True, body
    return body["model_version"]


def test_answers_are_those_of_retrainer_predict(server, registry, tmp_path):
    version = _serving(server)
    assert version == registry.production()

    answer = _classify(server, TEXTS)

    assert answer["model_version"] == version
    predictions = answer["predictions"]
    assert [p["id"] for p in predictions] == [f"T-{n}" for n in range(len(TEXTS))]
    model_dir = fetch_model(registry.store, version, tmp_path / "cache")
    expected = predict_probabilities(model_dir, TEXTS, RetrainerSettings().training.max_length)
    for prediction, row in zip(predictions, expected.tolist(), strict=True):
        assert prediction["model_version"] == version
        assert list(prediction["probabilities"]) == list(LABELS)
        assert prediction["label"] == LABELS[max(range(len(LABELS)), key=row.__getitem__)]
        assert prediction["confidence"] == pytest.approx(max(row), abs=1e-5)
        # Batched with other texts than predict batches them: padding moves the last float bits only.
        assert list(prediction["probabilities"].values()) == pytest.approx(row, abs=1e-5)

    # ... and what the command prints, on the single-line texts (it prints one line per text)
    single_line = [text for text in TEXTS if "\n" not in text][:6]
    printed = run_retrainer(
        "predict",
        *single_line,
        cwd=tmp_path,
        env={
            "RETRAINER_S3__ENDPOINT_URL": registry.s3.endpoint_url,
            "RETRAINER_S3__BUCKET": registry.s3.bucket,
            "RETRAINER_WORK_DIR": str(tmp_path / "work"),
        },
    )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == f"model {version}"
    for line, prediction in zip(lines[1:], predictions[: len(single_line)], strict=True):
        label, confidence = line.split()[:2]
        assert (label, confidence) == (prediction["label"], f"{prediction['confidence']:.3f}")


def test_the_bearer_token_guards_the_api_and_not_the_probes(server, registry):
    body = tickets(["The app crashes every time I click save"])
    feedback = {"ticket_id": "T-refused", "text": f"{MARKER} crashes on save", "label": "bug"}
    with server.client(authorised=False) as anonymous, server.client("wrong-token") as wrong:
        for client in (anonymous, wrong):
            assert client.post("/v1/classify", json=body).status_code == 401
            assert client.post("/v1/feedback", json=feedback).status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.get("/healthz").json() == {"status": "alive"}
        schema = anonymous.get("/openapi.json").json()  # the API's schema and its page are open too
        assert {"/v1/classify", "/v1/feedback"} <= set(schema["paths"])
        assert anonymous.get("/docs").status_code == 200
    with server.client() as client:
        assert client.post("/v1/classify", json=body).status_code == 200

    stored = [registry.store.get(info.key)[0] for info in registry.store.list_objects("incoming/")]
    assert not [data for data in stored if b"T-refused" in data]  # refused feedback wrote nothing
    assert TOKEN not in server.log()


def test_limits_answer_413_and_422_without_echoing_the_tickets(server):
    too_many = tickets([f"{MARKER} crash number {n}" for n in range(65)])  # the default limit is 64
    too_big = tickets([f"{MARKER} " * 70_000])  # over the default 1 MiB
    refused = {
        "too many tickets": (too_many, 422),
        "body too big": (too_big, 413),
        "empty text": (tickets([MARKER, ""]), 422),
        "no tickets": ({"tickets": []}, 422),
        "text not a string": ({"tickets": [{"id": "T-1", "text": [MARKER]}]}, 422),
        "no id": ({"tickets": [{"text": MARKER}]}, 422),
        "unknown field": ({"tickets": [{"id": "T-1", "text": "crash on save"}], "extra": MARKER}, None),
    }
    with server.client() as client:
        for what, (body, status) in refused.items():
            response = client.post("/v1/classify", json=body)
            if status is not None:
                assert response.status_code == status, (what, response.status_code)
                assert response.json()["detail"], what  # a message saying what is wrong
            assert MARKER not in response.text, what
        broken_json = client.post(
            "/v1/classify",
            content=b'{"tickets": [{"id": "T-1", "text": "' + MARKER.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert broken_json.status_code == 422 and MARKER not in broken_json.text
        assert client.post("/v1/classify", json=tickets([MARKER] * 64)).status_code == 200  # the limit itself

    assert MARKER not in server.log()
    assert MARKER not in httpx.get(f"{server.url}/metrics").text


def test_metrics_count_requests_latency_batches_version_and_labels(server):
    version = _serving(server)
    texts = [text for text, _ in CANARY_TICKETS][:7]
    before = read_metrics(server)

    predictions = _classify(server, texts)["predictions"]
    with server.client(authorised=False) as anonymous:
        assert anonymous.post("/v1/classify", json=tickets(texts)).status_code == 401
    after = read_metrics(server)

    def delta(name: str, **labels: str) -> float:
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)

    classify = {
        dict(labels).get("endpoint") for name, labels in after if name.startswith("retrainer_serve_request")
    }
    [endpoint] = [name for name in classify if name and "classify" in name]
    assert delta("retrainer_serve_requests_total", endpoint=endpoint, status="200") == 1
    assert delta("retrainer_serve_requests_total", endpoint=endpoint, status="401") == 1
    assert delta("retrainer_serve_request_seconds_count", endpoint=endpoint) >= 1
    assert metric_total(after, "retrainer_serve_request_seconds_bucket", endpoint=endpoint, le="+Inf") >= 1
    assert delta("retrainer_serve_batch_size_sum") == len(texts)  # every ticket scored in some batch, once
    assert delta("retrainer_serve_batch_size_count") >= 1
    assert metric_total(after, "retrainer_serve_model_info", version=version) == 1
    by_label = Counter(p["label"] for p in predictions)
    for label in LABELS:
        assert delta("retrainer_serve_predictions_total", label=label) == by_label[label], label
    low = sum(p["confidence"] < 0.5 for p in predictions)  # the default confidence threshold
    assert delta("retrainer_serve_low_confidence_total") == low


def _flip_under_load(server: ServeProcess, flip, old: str, new: str) -> None:
    """Run `flip` (which moves the pointer from `old` to `new`) while four clients keep sending; check that
    nothing failed, every answer names one version, the switch came within the poll interval plus the
    load budget, and only `new` answers once it has."""
    with ContinuousClients(server) as clients:
        time.sleep(1.0)  # answers from the old version first
        flipped = time.monotonic()
        flip()
        first_new = clients.wait_for_version(new, timeout_s=60)
        time.sleep(1.5)  # answers after the switch
    answers = clients.answers

    failed = [answer for answer in answers if answer.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[:3]}"
    assert first_new is not None, f"no answer from {new} within 60 s; readiness: {server.readiness()}"
    switch_s = first_new.received - flipped
    assert switch_s <= POLL_INTERVAL_S + LOAD_BUDGET_S, f"the switch took {switch_s:.1f} s"
    assert {answer.version for answer in answers} == {old, new}
    assert all(answer.prediction_versions == {answer.version} for answer in answers)  # one version a request
    before = [answer for answer in answers if answer.received < flipped]
    after = [answer for answer in answers if answer.sent > first_new.received]
    assert before and {answer.version for answer in before} == {old}
    assert len(after) >= 4 and {answer.version for answer in after} == {new}
    assert server.readiness()["model_version"] == new


def test_a_flip_is_followed_under_load_with_no_failed_request(server, registry):
    old = _serving(server)
    new = registry.second if old == registry.first else registry.first
    before = read_metrics(server)

    _flip_under_load(server, lambda: promote(registry.store, new, old), old, new)

    after = read_metrics(server)
    assert metric_total(after, "retrainer_serve_model_info", version=new) == 1
    assert metric_total(after, "retrainer_serve_model_info", version=old) == 0  # one model loaded
    swaps = metric_total(after, "retrainer_serve_model_swaps_total")
    assert swaps - metric_total(before, "retrainer_serve_model_swaps_total") == 1


def test_a_rollback_is_followed_under_load(server, registry):
    current = _serving(server)
    if read_production_pointer(registry.store)[0].previous_version is None:  # this test alone
        new = registry.second if current == registry.first else registry.first
        promote(registry.store, new, current)
        server.wait_serving(new, timeout_s=60)
        current = new
    previous = read_production_pointer(registry.store)[0].previous_version

    _flip_under_load(server, lambda: rollback(registry.store, "serving test"), current, previous)


def test_a_broken_version_is_not_swapped_in_and_is_named(server, registry, tiny_model_dir):
    serving = _serving(server)
    wrong_labels = publish_served_version(registry.store, tiny_model_dir, registry.scratch, labelled=False)
    unreadable = publish_served_version(
        registry.store, tiny_model_dir, registry.scratch, garbled_weights=True
    )
    corrupt = publish_served_version(registry.store, tiny_model_dir, registry.scratch)
    damage(registry.store, f"models/{corrupt}/model.safetensors", "flip")  # differs from its digest

    for bad in (wrong_labels, unreadable, corrupt):
        promote(registry.store, bad, registry.production())
        server.wait_for(
            lambda bad=bad: (server.readiness().get("rejected") or {}).get("version") == bad,
            f"{bad} rejected",
            timeout_s=POLL_INTERVAL_S + LOAD_BUDGET_S,
        )
        readiness = server.readiness()
        assert readiness["ready"] is True and readiness["model_version"] == serving, readiness
        assert readiness["rejected"]["reason"]
        assert _classify(server, ["The app crashes every time I click save"])["model_version"] == serving
        metrics = read_metrics(server)
        assert metric_total(metrics, "retrainer_serve_model_rejections_total", version=bad) == 1
        assert metric_total(metrics, "retrainer_serve_model_info", version=serving) == 1
        assert metric_total(metrics, "retrainer_serve_model_info", version=bad) == 0
        assert bad in server.log()

    # Not retried while the pointer stays: no second rejection, no second log line.
    lines = [line for line in server.log().splitlines() if corrupt in line]
    time.sleep(4 * POLL_INTERVAL_S)
    assert metric_total(read_metrics(server), "retrainer_serve_model_rejections_total", version=corrupt) == 1
    assert [line for line in server.log().splitlines() if corrupt in line] == lines
    assert _serving(server) == serving
    promote(registry.store, serving, corrupt)  # production back on a good version, for the tests after


def test_sigterm_answers_the_request_in_flight_and_exits_0(registry, tmp_path):
    # A batch waits 3 s to fill (the request's 100 tickets are under max_batch): the request is still in
    # flight when SIGTERM comes, 1 s after it was sent.
    drained = start_serve(
        registry.s3, tmp_path, max_wait_ms=3000, max_batch=1000, max_tickets_per_request=100
    )
    try:
        drained.wait_ready()
        texts = [
            f"Export number {n} fails. " + "The page hangs, then crashes on save. " * 8 for n in range(100)
        ]
        result = {}

        def slow_request() -> None:
            with drained.client() as client:
                response = client.post("/v1/classify", json=tickets(texts))
            result.update(status=response.status_code, body=response.json(), received=time.monotonic())

        sender = threading.Thread(target=slow_request)
        sender.start()
        time.sleep(1.0)
        terminated = time.monotonic()
        drained.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:  # a new request is no longer taken
            late = httpx.post(f"{drained.url}/v1/classify", json=tickets(["crash"]), timeout=10).status_code
        except httpx.TransportError:
            late = None
        sender.join(timeout=60)

        assert result.get("status") == 200, result
        assert len(result["body"]["predictions"]) == len(texts)
        assert result["received"] > terminated, "the request was answered before SIGTERM: nothing drained"
        assert late in (None, 503)
        assert drained.process.wait(timeout=40) == 0, drained.log()[-3000:]
    finally:
        drained.stop()


def _post_feedback(server: ServeProcess, records: list[dict]) -> list[httpx.Response]:
    """POST each record from a thread of its own, all at once (what group commit is for)."""
    responses: list[httpx.Response | None] = [None] * len(records)
    start = threading.Barrier(len(records))

    def post(index: int) -> None:
        with server.client() as client:
            start.wait()
            responses[index] = client.post("/v1/feedback", json=records[index])

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(records))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


def test_feedback_is_stored_when_acknowledged_and_the_next_run_ingests_it(run_resources, tmp_path):
    store = run_resources.store
    server = start_serve(store.settings, tmp_path / "serve")
    try:
        readiness = httpx.get(f"{server.url}/readyz", timeout=10)
        assert readiness.status_code == 503 and readiness.json()["ready"] is False  # no model yet
        with server.client() as client:
            assert client.post("/v1/classify", json=tickets(["crash"])).status_code == 503

        labels = ["bug", "feature", "question", "feature_request", "general_inquiry", "bug"] * 2
        records = [
            {
                "ticket_id": f"FB-{n}",
                "text": f"{MARKER} agent correction {n}: the export cuts the last page",
                "label": label,
            }
            for n, label in enumerate(labels)
        ]
        responses = _post_feedback(server, records)

        assert [response.status_code for response in responses] == [202] * len(records)
        keys = {response.json()["object"] for response in responses}
        assert all(response.json()["accepted"] is True for response in responses)
        assert len(keys) < len(records)  # records arriving together share an object
        stored = {}
        for key in keys:
            assert key.startswith("incoming/feedback/") and key.endswith(".jsonl"), key
            frame = parse_batch(store.get(key)[0], key)  # what ingestion reads
            for row in frame.to_dict("records"):
                assert row["ticket_id"] not in stored  # each record once
                stored[row["ticket_id"]] = row
                datetime.fromisoformat(row["created_at"])
        canonical = {"feature": "feature_request", "question": "general_inquiry"}
        assert {ticket: row["label"] for ticket, row in stored.items()} == {
            record["ticket_id"]: canonical.get(record["label"], record["label"]) for record in records
        }

        with server.client() as client:
            unknown = client.post(
                "/v1/feedback", json={"ticket_id": "FB-x", "text": MARKER, "label": "praise"}
            )
            missing = client.post("/v1/feedback", json={"ticket_id": "FB-y", "text": MARKER})
        assert unknown.status_code == missing.status_code == 422
        assert MARKER not in unknown.text + missing.text
        assert len(store.list_objects("incoming/feedback/")) == len(keys)  # refused feedback wrote nothing

        # The nightly run: feedback and a producer's batch, through the same validation.
        drop_batch(store, "batch-1.csv", 300, seed=1)
        outcome = retrain(resources=run_resources, training=QUICK)

        assert outcome.status == "promoted"
        assert outcome.rows_accepted == 300 + len(records) and outcome.rows_quarantined == 0
        manifest, _ = read_manifest(store)
        assert sum(manifest.objects[key].accepted for key in keys) == len(records)
        # ... and the service follows what it promoted: helpdesk -> service -> incoming/ -> run -> service
        server.wait_serving(outcome.production_version, timeout_s=POLL_INTERVAL_S + FIRST_LOAD_BUDGET_S)
        assert _classify(server, ["The app crashes on save"])["model_version"] == outcome.production_version
        assert MARKER not in server.log()
    finally:
        server.stop()


def test_feedback_objects_are_json_lines_with_the_spec_fields(registry, server):
    with server.client() as client:
        response = client.post(
            "/v1/feedback", json={"ticket_id": "T-42", "text": "Please add a dark mode", "label": "feature"}
        )
    assert response.status_code == 202, response.text
    key = response.json()["object"]
    [line] = registry.store.get(key)[0].decode().splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("ticket_id", "text", "label")} == {
        "ticket_id": "T-42",
        "text": "Please add a dark mode",
        "label": "feature_request",
    }
    assert datetime.fromisoformat(record["created_at"]).utcoffset().total_seconds() == 0
    assert key.startswith(f"incoming/feedback/{record['created_at'][:10]}/")


def test_a_crash_loses_no_acknowledged_feedback(server, registry):
    """SIGKILL while agents keep sending: every record answered 202 is in the object it was told. (Last
    in the module: it kills the module's server.)"""
    acknowledged: list[tuple[str, str]] = []

    def send_until_refused(client_number: int) -> None:
        with server.client() as client:
            for n in range(10_000):
                ticket_id = f"K{client_number}-{n}"
                record = {"ticket_id": ticket_id, "text": "Export cuts the last page", "label": "bug"}
                try:
                    response = client.post("/v1/feedback", json=record)
                except httpx.TransportError:
                    return  # the server is gone
                if response.status_code != 202:
                    return
                acknowledged.append((ticket_id, response.json()["object"]))

    senders = [threading.Thread(target=send_until_refused, args=(n,)) for n in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(1.5)
    server.process.kill()
    for sender in senders:
        sender.join(timeout=60)

    assert len(acknowledged) >= 4, acknowledged
    stored: dict[str, set[str]] = {}
    for key in {key for _, key in acknowledged}:
        data = registry.store.get(key)[0]
        stored[key] = {json.loads(line)["ticket_id"] for line in data.decode().splitlines()}
    lost = [ticket_id for ticket_id, key in acknowledged if ticket_id not in stored[key]]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged records are not stored"
