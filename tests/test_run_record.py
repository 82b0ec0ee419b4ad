"""The run record: assembled from what the steps returned, the stored records derived from it, one
vocabulary (old history records still read), and resources that never reach Prefect's database."""

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from pydantic import ValidationError

from retrainer.core.evaluation import EvalReport, ModelEvaluation
from retrainer.core.gate import Decision
from retrainer.core.validation import REASON_KIND, ValidatedBatch
from retrainer.records import DecisionRecord, ProductionPointer, RunRecord
from retrainer.resources import Resources
from retrainer.run_steps import Ingestion, Production, Publication, RunProgress, ScoredModel, Scores
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import S3Store
from tasks.registry import smoke_verdicts

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def _report(accuracy: float) -> EvalReport:
    labels = ("bug", "feature_request", "general_inquiry")
    return EvalReport(
        examples=10,
        accuracy=accuracy,
        macro_f1=accuracy,
        precision=dict.fromkeys(labels, accuracy),
        recall=dict.fromkeys(labels, accuracy),
        f1=dict.fromkeys(labels, accuracy),
        support=dict.fromkeys(labels, 3),
        confusion_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    )


def _batch(key: str, rows: int, accepted: int, merged: int) -> ValidatedBatch:
    quarantined = rows - accepted - merged
    return ValidatedBatch(
        key=key,
        etag=f"etag-{key}",
        rows=rows,
        accepted=pd.DataFrame({"ticket_id": [f"{key}-{n}" for n in range(accepted)]}),
        merged=pd.DataFrame({"ticket_id": [f"{key}-m{n}" for n in range(merged)]}),
        rejected=pd.DataFrame(
            {
                "source_row": range(2, 2 + quarantined),
                "reason": ["text is empty"] * quarantined,
                REASON_KIND: ["text is empty"] * quarantined,
            }
        ),
    )


def _predictions(count: int) -> pd.DataFrame:
    """`count` rows of newly computed predictions (only their number matters to the record)."""
    return pd.DataFrame({"ticket_id": [f"T-{n}" for n in range(count)]})


def _progress_of_a_promotion() -> RunProgress:
    champion_pointer = ProductionPointer(
        version="m-champion", accuracy=0.7, dataset_version="ds-0", promoted_at=NOW, run_id="run-0"
    )
    progress = RunProgress("run-1", forced_reason=None)
    progress.ingestion = Ingestion(None, "ds-1", [_batch("a.csv", 10, 8, 1), _batch("b.csv", 5, 5, 0)])
    progress.production = Production(champion_pointer, "etag-pointer")
    progress.scores = Scores(
        challenger_version="m-challenger",
        challenger=ScoredModel(
            ModelEvaluation(overall=_report(0.9), correct=[True] * 10), _predictions(10), reused=0
        ),
        champion=ScoredModel(
            ModelEvaluation(overall=_report(0.7), correct=[True] * 7 + [False] * 3), _predictions(4), reused=6
        ),
        decision=Decision(promote=True, reasons=["accuracy: beats"], p_value=0.25),
    )
    return progress


def test_the_record_is_assembled_from_the_steps_in_one_vocabulary():
    progress = _progress_of_a_promotion()
    progress.publication = Publication("promoted", "m-challenger", ["smoke test: passed"], ["s3://b/x.png"])

    record = progress.record("promoted")

    assert (record.batches_ingested, record.rows_accepted, record.rows_merged, record.rows_quarantined) == (
        2,
        13,
        1,
        1,
    )
    assert record.problems == ["a.csv: row 2: text is empty"]
    assert (record.challenger_version, record.champion_version, record.production_version) == (
        "m-challenger",
        "m-champion",
        "m-challenger",
    )
    assert (record.challenger_accuracy, record.champion_accuracy, record.p_value) == (0.9, 0.7, 0.25)
    assert record.reasons == ["accuracy: beats", "smoke test: passed"]  # the gate's, then the publish step's
    assert (record.champion_scored, record.champion_reused) == (4, 6)  # eval tickets: computed, known
    assert (record.challenger_scored, record.challenger_reused) == (10, 0)
    assert record.report_uris == ["s3://b/x.png"]


def test_the_history_entry_and_the_pointer_are_derived_from_the_record():
    record = _progress_of_a_promotion().record("promoted")

    decision = record.decision_record(NOW)
    pointer = record.production_pointer(NOW, "promoted")

    assert decision.action == "promoted" and decision.challenger_version == "m-challenger"
    assert (decision.challenger_accuracy, decision.champion_accuracy) == (0.9, 0.7)
    assert decision.previous_version == "m-champion"  # what production served when the run started
    assert decision.reasons == record.reasons and decision.dataset_version == "ds-1"
    assert (pointer.version, pointer.previous_version, pointer.accuracy) == (
        "m-challenger",
        "m-champion",
        0.9,
    )
    assert record.decision_summary()["champion_version"] == "m-champion"


def test_a_run_that_stops_before_the_gate_reports_the_production_it_found():
    progress = _progress_of_a_promotion()
    progress.scores = None

    record = progress.record("no-new-data", ["dataset ds-1 was already decided on; champion kept"])

    assert record.production_version == "m-champion" and record.challenger_version is None
    assert record.reasons == ["dataset ds-1 was already decided on; champion kept"]


def test_a_status_outside_the_vocabulary_is_refused():
    with pytest.raises(ValidationError, match="status"):
        RunRecord(status="published", run_id="run-1")


def test_a_field_the_record_does_not_declare_is_refused_not_dropped():
    with pytest.raises(ValidationError, match="rows_acepted"):
        RunRecord(status="kept", run_id="run-1", rows_acepted=3)


def test_history_written_under_the_old_names_still_reads():
    old = {
        "run_id": "run-1",
        "decided_at": "2026-11-30T06:00:00Z",
        "action": "promoted",
        "dataset_version": "ds-1",
        "candidate_version": "m-2",
        "candidate_accuracy": 0.8,
        "production_version": "m-2",
        "previous_production": "m-1",
        "reasons": ["gate"],
    }

    record = DecisionRecord.model_validate_json(json.dumps(old))

    assert (record.challenger_version, record.challenger_accuracy, record.previous_version) == (
        "m-2",
        0.8,
        "m-1",
    )
    assert smoke_verdicts([record]) == {"m-2": "servable", "m-1": "servable"}
    assert "candidate_version" not in record.model_dump_json()  # written back under the one vocabulary


def test_resources_are_recorded_by_prefect_as_a_name_not_as_their_secrets():
    from flows.retrain import retrain

    store = S3Store(S3Settings(endpoint_url="http://127.0.0.1:9"), credentials=("AKIDEXAMPLE", "s3cr3t-key"))
    resources = Resources(RetrainerSettings(s3=store.settings), store)

    # What Prefect stores as a flow run's parameters (Flow.serialize_parameters, as in create_flow_run).
    recorded = retrain.serialize_parameters({"resources": resources, "force": False})

    assert recorded == {"resources": "<Resources>", "force": False}
    assert "s3cr3t" not in json.dumps(recorded)


def test_the_label_check_figures_reach_the_record_the_history_metrics_and_the_report():
    from retrainer.core.agreement import BatchAgreement, LabelAgreement
    from retrainer.report.markdown import render_run_markdown

    progress = _progress_of_a_promotion()
    agreement = LabelAgreement(
        new=[[60, 35, 5], [5, 90, 5], [5, 5, 90]],
        established=[[90, 5, 5], [5, 90, 5], [5, 5, 90]],
        batches={
            "b.csv": BatchAgreement(tickets=100, agreeing=60),
            "a.csv": BatchAgreement(tickets=200, agreeing=180),
        },
        extra_predictions=240,
        extra_seconds=3.21,
    )
    blocked = Decision(
        promote=False, reasons=["label flips: EXCEEDS"], label_alarm=True, suspect_batches=["b.csv"]
    )
    progress.scores = Scores(
        challenger_version="m-challenger",
        challenger=ScoredModel(
            ModelEvaluation(overall=_report(0.9), established=_report(0.8), correct=[True] * 10),
            _predictions(10),
        ),
        champion=ScoredModel(
            ModelEvaluation(overall=_report(0.7), established=_report(0.9), correct=[True] * 10),
            _predictions(10),
        ),
        decision=blocked,
        agreement=agreement,
    )

    record = progress.record("kept")

    assert record.suspect_batches == ["b.csv"] and record.label_agreement == agreement
    assert record.decision_record(NOW).suspect_batches == ["b.csv"]
    summary = record.label_check_summary()
    assert summary["new_agreement"] == pytest.approx(0.8) and summary["established_agreement"] == 0.9
    assert summary["batches"] == {"b.csv": 0.6, "a.csv": 0.9} and summary["extra_predictions"] == 240
    assert (summary["challenger_established_accuracy"], summary["champion_established_accuracy"]) == (
        0.8,
        0.9,
    )
    json.dumps(summary)  # metrics.json holds it as it is
    report = render_run_markdown(record)
    assert "## Label check" in report and "**SUSPECT batches**: `b.csv`" in report
    assert report.index("| `b.csv` | 100 | 60.0% |") < report.index("| `a.csv` | 200 | 90.0% |")
    assert "challenger 80.0%, champion 90.0%" in report
