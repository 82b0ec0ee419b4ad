"""Erased tickets stay erased: a batch file that brings an erased ticket back (a replayed export) has its
records withheld at ingestion, neither curated nor quarantined, but counted. The pure step in memory,
then the nightly ingestion after `forget` against a real SeaweedFS."""

import gzip
import io
import json
import logging

import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from app.samples import generate_tickets, tickets_to_csv
from flows.forget import forget
from flows.retrain import ingest_new_batches
from retrainer.core.batch_files import ROW_NUMBER, LoadedBatch
from retrainer.core.batch_files.formats import ids_in_bytes, parse_batch, parsed_batch
from retrainer.core.validation import validate_batches
from retrainer.report.markdown import render_validation_markdown, validation_table
from retrainer.settings import IngestSettings, ValidationPolicy
from tasks.erasure import withhold_erased
from tasks.manifest import Manifest, read_manifest

INGEST = IngestSettings()
LIMIT = 2**20


def _loaded(key: str, raw: bytes) -> LoadedBatch:
    return parsed_batch(key, '"e"', raw, INGEST)


def _holds(data: bytes, ticket_id: str) -> bool:
    return ids_in_bytes(data, "any", {ticket_id}, LIMIT) == {ticket_id}


# --- in memory --------------------------------------------------------------------------------------


def test_records_of_erased_ids_are_withheld_as_validation_reads_the_ids_and_the_rest_keep_their_rows():
    csv = b"ticket_id,text,label\n T-1 ,Refund me,billing\nT-2,App crashes,bug\nT-10,Add dark mode,feature\n"
    jsonl = (
        b'{"ticket_id": 7, "text": "Card declined", "label": "billing"}\n'
        b"not json\n"
        b'{"ticket_id": "8", "text": "Login fails", "label": "bug"}\n'
        b'{"ticket_id": " 9 ", "text": "Where is my invoice", "label": "billing"}\n'
    )
    buffer = io.BytesIO()
    parquet_ids = pyarrow.array([7, 70], pyarrow.int64())
    pq.write_table(
        pyarrow.table({"ticket_id": parquet_ids, "text": ["a", "b"], "label": ["bug", "bug"]}), buffer
    )
    batches = [
        _loaded("incoming/a.csv", csv),
        _loaded("incoming/b.jsonl.gz", gzip.compress(jsonl)),
        _loaded("incoming/c.parquet", buffer.getvalue()),
    ]

    csv_batch, jsonl_batch, parquet_batch = withhold_erased(batches, {"T-1", "7", "9"}, INGEST)

    assert [batch.erased for batch in (csv_batch, jsonl_batch, parquet_batch)] == [1, 2, 1]
    assert list(csv_batch.frame["ticket_id"]) == ["T-2", "T-10"]  # T-10 is not T-1
    assert list(csv_batch.frame[ROW_NUMBER]) == [2, 3]
    assert list(jsonl_batch.frame[ROW_NUMBER]) == [2, 3]  # the broken line keeps its place and number
    assert list(parquet_batch.frame["ticket_id"]) == [70]
    # The bytes lose the same records (a batch rejected whole is quarantined as its bytes), in their format.
    assert not _holds(csv_batch.raw, "T-1") and _holds(csv_batch.raw, "T-10")
    assert parse_batch(jsonl_batch.raw, jsonl_batch.key)["ticket_id"].tolist()[1:] == ["8"]
    assert b"not json" in gzip.decompress(jsonl_batch.raw)
    assert parse_batch(parquet_batch.raw, parquet_batch.key)["ticket_id"].tolist() == [70]


def test_batches_without_erased_records_unreadable_or_without_ids_are_returned_as_they_are():
    clean = _loaded("incoming/clean.csv", b"ticket_id,text,label\nT-2,App crashes,bug\n")
    unreadable = _loaded("incoming/broken.csv", b'ticket_id,text,label\nT-1,"never closed,bug\n')
    no_ids = _loaded("incoming/no-ids.csv", b"text,label\nT-1 wants a refund,billing\n")
    assert unreadable.frame is None and unreadable.error

    batches = [clean, unreadable, no_ids]
    assert all(a is b for a, b in zip(withhold_erased(batches, {"T-1"}, INGEST), batches, strict=True))
    assert (
        withhold_erased([_loaded("incoming/x.csv", b"ticket_id,text,label\nT-1,a,bug\n")], set(), INGEST)[
            0
        ].erased
        == 0
    )


def test_validation_carries_the_count_and_a_batch_rejected_whole_keeps_no_trace_of_the_ticket():
    missing_label = _loaded(
        "incoming/partial.csv", b"ticket_id,text\nT-1,Refund me please\nT-2,App crashes\n"
    )

    [withheld] = withhold_erased([missing_label], {"T-1"}, INGEST)
    [result] = validate_batches([withheld], ValidationPolicy(), INGEST.label_aliases, None)

    assert result.rejected_whole and (result.rows, result.erased) == (1, 1)
    assert list(result.rejected["ticket_id"]) == ["T-2"]
    assert b"Refund me" not in withheld.raw and b"App crashes" in withheld.raw
    assert validation_table([result])[0]["erased"] == 1
    assert "`incoming/partial.csv` 1" in render_validation_markdown("run-1", [result])


# --- end to end against SeaweedFS --------------------------------------------------------------------


def test_an_erased_ticket_sent_again_is_neither_curated_nor_quarantined_but_counted(run_resources, caplog):
    store = run_resources.store
    first = generate_tickets(30, seed=1, id_prefix="a")
    store.put("incoming/a.csv", tickets_to_csv(first))
    ingest_new_batches(run_resources, "run-1")
    x_row = first.iloc[[0]]
    x, x_text = x_row["ticket_id"].iloc[0], x_row["text"].iloc[0]
    forget([x], "test", resources=run_resources)

    # A replayed export: X as it was, among new tickets; and a file rejected whole (no label column).
    new = generate_tickets(12, seed=2, id_prefix="b")
    y = new["ticket_id"].iloc[0]
    store.put("incoming/replay.csv", tickets_to_csv(pd.concat([new, x_row], ignore_index=True)))
    other = generate_tickets(1, seed=3, id_prefix="c")
    partial = pd.concat([x_row, other], ignore_index=True)[["ticket_id", "text"]]
    store.put("incoming/replay-partial.jsonl", partial.to_json(orient="records", lines=True).encode())
    with caplog.at_level(logging.WARNING, logger="retrainer"):
        ingestion = ingest_new_batches(run_resources, "run-2")

    curated = set(ingestion.curated["ticket_id"])
    assert x not in curated and y in curated
    quarantined = [info.key for info in store.list_objects("quarantine/run-2/")]
    assert "quarantine/run-2/replay-partial.jsonl" in quarantined  # the file rejected whole, less X
    assert not [key for key in quarantined if _holds(store.get(key)[0], x)]
    assert not [key for key in quarantined if x_text.encode() in store.get(key)[0]]

    manifest, _ = read_manifest(store)
    assert manifest.objects["incoming/replay.csv"].erased == 1
    assert (
        manifest.objects["incoming/replay.csv"].rows == 12 == manifest.objects["incoming/replay.csv"].accepted
    )
    assert {result.key: result.erased for result in ingestion.validated} == {
        "incoming/replay-partial.jsonl": 1,
        "incoming/replay.csv": 1,
    }
    assert ingestion.facts().rows_erased == 2
    assert "incoming/replay.csv: 1 record(s) of erased tickets withheld" in caplog.text
    assert x_text not in caplog.text


def test_a_manifest_written_before_erased_was_counted_still_reads():
    entry = {
        "etag": '"e"',
        "rows": 3,
        "accepted": 3,
        "quarantined": 0,
        "run_id": "r",
        "ingested_at": "2026-01-01T00:00:00Z",
    }

    old = Manifest.model_validate_json(
        json.dumps({"dataset_version": "v1", "objects": {"incoming/a.csv": entry}})
    )

    assert old.objects["incoming/a.csv"].erased == 0
