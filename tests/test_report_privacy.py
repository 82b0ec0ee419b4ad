"""Ticket text stays in the data area (S3: the batches, the curated data, the quarantine): what leaves it
(Prefect artifacts, events, notifications, run logs, the run's state and record, the model card and
``metrics.json``) carries batch keys, rows, reason kinds and counts. Text previews in the validation report
only with `report_text_previews`, masked.

A distinctive text (a made-up word and an e-mail address) is planted in rejected and accepted rows, the
real flow runs against real SeaweedFS and Prefect, and everything it published is read back.
"""

import json
import uuid

import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import failed_record, retrain
from retrainer.core.batch_files import LoadedBatch
from retrainer.core.batch_files.formats import parse_batch
from retrainer.core.validation import validate_batches
from retrainer.records import RunRecord
from retrainer.report.markdown import render_run_markdown, render_validation_markdown
from retrainer.resources import Resources
from retrainer.run_steps import Ingestion
from retrainer.settings import RetrainerSettings, ValidationPolicy
from retrainer.storage import ObjectStore
from tasks.alerts import validation_failed_payload
from tasks.registry import read_history
from tasks.report import DECISION_ARTIFACT_KEY, VALIDATION_ARTIFACT_KEY, VALIDATION_TABLE_KEY
from tests.test_retrain_flow import LEARNS, _event_payloads

MARKER = "Zorblaxquux"
ADDRESS = "jane.doe@example.com"
PLANTED_TEXT = f"{MARKER} charged me twice, please refund and write to {ADDRESS}"
FORMULA_TEXT = f'=HYPERLINK("http://x") {MARKER} {ADDRESS}'  # rejected: the text is the offending value


def _planted_rows(count: int) -> pd.DataFrame:
    """`count` bad rows carrying the planted text: a label not in the set, or a formula as the text."""
    rows = [
        {"ticket_id": f"P-{n}", "text": PLANTED_TEXT, "label": "spam"}
        if n % 2
        else {"ticket_id": f"P-{n}", "text": FORMULA_TEXT, "label": "bug"}
        for n in range(count)
    ]
    return pd.DataFrame(rows).assign(created_at="")


def _batch_csv(good: int, bad: int, accepted_planted: bool = False) -> bytes:
    """Generated tickets, `bad` planted bad rows, and with `accepted_planted` one good row with the text."""
    frames = [generate_tickets(good, seed=1, id_prefix="G"), _planted_rows(bad)]
    if accepted_planted:
        frames.append(pd.DataFrame([{"ticket_id": "P-ok", "text": PLANTED_TEXT, "label": "bug"}]))
    return tickets_to_csv(pd.concat(frames, ignore_index=True).fillna(""))


def _assert_no_ticket_text(where: str, text: str) -> None:
    lowered = text.lower()
    assert MARKER.lower() not in lowered and "jane.doe" not in lowered, f"ticket text in {where}"


def _validated(good: int, bad: int, key: str = "incoming/planted.csv"):
    raw = _batch_csv(good, bad)
    batch = LoadedBatch(key, '"e"', raw, parse_batch(raw, key), None)
    return validate_batches([batch], ValidationPolicy(), {}, None)


# In memory: the report, the event payload and the run record.


def test_the_validation_report_names_batch_row_and_reason_kind_without_text_by_default():
    batches = _validated(good=40, bad=4)  # 9%: rows quarantined, the batch kept

    report = render_validation_markdown("run-1", batches)

    _assert_no_ticket_text("the validation report", report)
    assert "'spam'" not in report  # nor the offending values
    assert "- **2** × label: not one of" in report and "  - `incoming/planted.csv` row 42\n" in report
    assert "- **2** × text: looks like a spreadsheet formula" in report


def test_with_previews_allowed_the_report_shows_the_text_masked_and_cut_short():
    batches = _validated(good=40, bad=4)

    report = render_validation_markdown("run-1", batches, text_previews=True)

    masked = f"{MARKER} charged me twice, please refund and write to [email]"
    assert f"  - `incoming/planted.csv` row 42: `{masked}`" in report
    assert ADDRESS not in report and "jane.doe" not in report


def test_a_preview_is_masked_before_it_is_cut_so_no_fragment_of_an_address_is_left():
    text = f"{MARKER} {'y' * 78} {ADDRESS} {'z' * 30}"  # unmasked, the cut would end in "jane.doe@"
    raw = tickets_to_csv(pd.DataFrame([{"ticket_id": "L-1", "text": text, "label": "spam"}]))
    batch = LoadedBatch("incoming/long.csv", '"e"', raw, parse_batch(raw, "incoming/long.csv"), None)

    report = render_validation_markdown(
        "run-1", validate_batches([batch], ValidationPolicy(), {}, None), True
    )

    assert f"row 1: `{MARKER} {'y' * 78} [email] z…`" in report and "jane" not in report


def test_the_event_payload_and_the_run_record_carry_reason_kinds_not_values():
    [batch] = _validated(good=40, bad=12)  # 23%: rejected whole

    payload = validation_failed_payload("run-2", batch)
    record = RunRecord(
        status="validation-failed", run_id="run-2", **dict(Ingestion(None, None, [batch]).facts())
    )

    assert batch.rejected_whole and "(got" in batch.problems[-1]  # the quarantine's errors.json keeps them
    _assert_no_ticket_text("the event payload", json.dumps(payload))
    assert "incoming/planted.csv: row 41: text: looks like a spreadsheet formula" in payload["row_problems"]
    _assert_no_ticket_text("the run record", record.model_dump_json())
    _assert_no_ticket_text("the decision report", render_run_markdown(record))
    assert "'spam'" not in record.model_dump_json() and len(record.problems) == 13  # the batch's and 12 rows


def test_a_file_without_its_header_row_shows_no_ticket_in_its_error():
    raw = f'T-1,"{PLANTED_TEXT}",billing\nT-2,Crash on save,bug\n'.encode()
    batch = LoadedBatch("incoming/headless.csv", '"e"', raw, parse_batch(raw, "incoming/headless.csv"), None)

    [result] = validate_batches([batch], ValidationPolicy(), {}, None)

    [error] = result.batch_errors
    assert error == (
        "missing required column(s) ticket_id, text, label "
        "(found: T-1, billing, 1 field that reads like text, not shown (is the header row missing?))"
    )


# The real flow: artifacts, events, notifications, logs and the run's state read back from Prefect.


def _previewing(s3_settings, store: ObjectStore, tmp_path, block: str, previews: bool) -> Resources:
    settings = RetrainerSettings(
        s3=s3_settings, work_dir=tmp_path / "work", notification_block=block, report_text_previews=previews
    )
    return Resources(settings, store)


def _published_by_run(flow_run_id: uuid.UUID) -> tuple[dict[str, str], list[str]]:
    """The run's artifacts (key: data, as text) and every line of its log in the Prefect API."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs, page = [], None
        while page is None or len(page) == 200:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(logs)
            )
            logs += page
    return {artifact.key: str(artifact.data) for artifact in artifacts if artifact.key}, [
        log.message for log in logs
    ]


def test_rejected_batches_leave_their_text_in_the_quarantine_only(
    s3_settings, store, tmp_path, webhook, prefect_api
):
    name = f"planted-{uuid.uuid4().hex[:8]}"  # the events of every test's run stay in the same API
    store.put(f"incoming/{name}.csv", _batch_csv(good=40, bad=12))
    store.put(f"incoming/{name}-headless.csv", f'T-1,"{PLANTED_TEXT}",bug\nT-2,Crash on save,bug\n'.encode())

    state = retrain(
        resources=_previewing(s3_settings, store, tmp_path, webhook.block, False), return_state=True
    )

    assert state.is_failed() and "found: T-1, bug, 1 field that reads like text" in state.message
    _assert_no_ticket_text("the run's state message", state.message)
    _assert_no_ticket_text(
        "the failed run's record", failed_record(state.result(raise_on_failure=False)).model_dump_json()
    )
    [notification] = webhook.payloads
    _assert_no_ticket_text("the notification", json.dumps(notification))
    [event] = _event_payloads("retrainer.validation.failed", f"incoming/{name}.csv")
    [headless] = _event_payloads("retrainer.validation.failed", f"incoming/{name}-headless.csv")
    _assert_no_ticket_text("the events", json.dumps([event, headless]))
    assert f"incoming/{name}.csv: row 41: text: looks like a spreadsheet formula" in event["row_problems"]
    artifacts, logs = _published_by_run(state.state_details.flow_run_id)
    assert {VALIDATION_ARTIFACT_KEY, VALIDATION_TABLE_KEY} <= artifacts.keys()
    _assert_no_ticket_text("the artifacts", json.dumps(artifacts))
    assert f"  - `incoming/{name}.csv` row 41\n" in artifacts[VALIDATION_ARTIFACT_KEY]
    _assert_no_ticket_text("the run log", "\n".join(logs))
    assert f"quarantined: incoming/{name}.csv: row 41: text: looks like a spreadsheet formula" in logs
    errors = store.get(f"quarantine/{state.state_details.flow_run_id}/{name}.csv.errors.json")[0]
    assert MARKER in errors.decode()  # the quarantine keeps the values


def test_with_previews_allowed_only_the_validation_report_shows_the_masked_text(
    s3_settings, store, tmp_path, webhook, prefect_api
):
    store.put("incoming/planted.csv", _batch_csv(good=40, bad=12))

    state = retrain(
        resources=_previewing(s3_settings, store, tmp_path, webhook.block, True), return_state=True
    )

    artifacts, logs = _published_by_run(state.state_details.flow_run_id)
    report = artifacts.pop(VALIDATION_ARTIFACT_KEY)
    assert f"row 42: `{MARKER} charged me twice, please refund and write to [email]`" in report
    assert "jane.doe" not in report
    _assert_no_ticket_text("the other artifacts", json.dumps(artifacts))
    _assert_no_ticket_text("the notification", json.dumps(webhook.payloads))
    _assert_no_ticket_text("the run log", "\n".join(logs))
    _assert_no_ticket_text("the run's state message", state.message)


def test_a_published_model_its_card_metrics_and_the_run_record_hold_no_ticket_text(run_resources, webhook):
    store = run_resources.store
    store.put("incoming/batch-1.csv", _batch_csv(good=300, bad=3, accepted_planted=True))
    resources = Resources(
        run_resources.settings.model_copy(update={"notification_block": webhook.block}), store
    )

    outcome = retrain(resources=resources, training=LEARNS)

    assert outcome.status == "promoted" and outcome.rows_quarantined == 3
    _assert_no_ticket_text("the run record", outcome.model_dump_json())
    _assert_no_ticket_text("the notification", json.dumps(webhook.payloads))
    _assert_no_ticket_text("the history", "".join(entry.model_dump_json() for entry in read_history(store)))
    for name in ("README.md", "metrics.json", "training.json"):
        _assert_no_ticket_text(name, store.get(f"models/{outcome.challenger_version}/{name}")[0].decode())
    artifacts, logs = _published_by_run(uuid.UUID(outcome.run_id))
    assert "Quarantined (3 problems" in artifacts[DECISION_ARTIFACT_KEY]
    _assert_no_ticket_text("the artifacts", json.dumps(artifacts))
    _assert_no_ticket_text("the run log", "\n".join(logs))
