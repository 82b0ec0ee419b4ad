"""Ingestion and validation against SeaweedFS: every row is curated or quarantined with a reason."""

import io
import json

import pandas as pd
import pytest

from retrainer.samples import generate_tickets, tickets_to_csv
from retrainer.storage import PreconditionFailedError
from tasks.ingest import (
    Manifest,
    commit_manifest,
    discover_new_batches,
    load_batch,
    manifest_entry,
    read_manifest,
    record_batches,
)
from tasks.validate import quarantine_batch, validate_batch

BAD_ROWS = (
    b"ticket_id,text,label,created_at\n"
    b"A-1,App crashes on save,bug,2026-01-01\n"
    b"A-2,,bug,2026-01-01\n"
    b"A-3,Please add dark mode,feature,2026-01-01\n"
    b",How do I reset my password?,general_inquiry,2026-01-01\n"
    b"A-5,How do I reset my password?,general_inquiry,2026-01-01\n"
)


def _validated(store, key, body):
    store.put(key, body)
    [info] = [info for info in store.list_objects(key)]
    batch = load_batch(store, info)
    return batch, validate_batch(batch)


def test_bad_rows_are_named_by_file_and_row_and_good_rows_go_on(store):
    _, result = _validated(store, "incoming/mixed.csv", BAD_ROWS)

    assert result.file_error is None
    assert list(result.accepted["ticket_id"]) == ["A-1", "A-5"]
    assert result.problems == [
        "incoming/mixed.csv: row 2: empty text",
        "incoming/mixed.csv: row 3: unknown label 'feature' (expected one of bug, feature_request, "
        "general_inquiry)",
        "incoming/mixed.csv: row 4: empty ticket_id",
    ]
    assert len(result.accepted) + len(result.rejected) == result.rows == 5
    assert list(result.accepted["source_row"]) == [1, 5]
    assert set(result.accepted["source_key"]) == {"incoming/mixed.csv"}


def test_rejected_rows_are_quarantined_in_s3_with_reasons(store):
    batch, result = _validated(store, "incoming/mixed.csv", BAD_ROWS)

    keys = quarantine_batch(store, "run-1", result, batch.raw)

    assert keys == ["quarantine/run-1/mixed.csv.errors.json", "quarantine/run-1/mixed.csv.rejected.csv"]
    report = json.loads(store.get(keys[0])[0])
    assert report["source_key"] == "incoming/mixed.csv" and len(report["problems"]) == 3
    rejected = pd.read_csv(io.BytesIO(store.get(keys[1])[0]), dtype=str, keep_default_na=False)
    assert list(rejected["source_row"]) == ["2", "3", "4"]
    assert rejected["reason"].str.len().gt(0).all()


def test_a_file_missing_required_columns_is_quarantined_whole(store):
    body = b"id,description,category\n1,crash,bug\n"
    batch, result = _validated(store, "incoming/wrong-columns.csv", body)

    assert result.accepted.empty
    assert (
        "incoming/wrong-columns.csv: missing required column(s) ticket_id, text, label" in result.file_error
    )
    keys = quarantine_batch(store, "run-1", result, batch.raw)
    assert store.get(keys[1])[0] == body  # the original bytes are kept


def test_undecodable_and_unsupported_files_are_file_errors_not_crashes(store):
    _, latin1 = _validated(
        store, "incoming/latin1.csv", "ticket_id,text,label\n1,caf\xe9 crash,bug\n".encode("latin-1")
    )
    _, excel = _validated(store, "incoming/tickets.xlsx", b"PK\x03\x04")

    assert "incoming/latin1.csv: not valid UTF-8" in latin1.file_error
    assert "incoming/tickets.xlsx: unsupported file type" in excel.file_error


def test_discovery_skips_recorded_objects_until_their_content_changes(store):
    store.put("incoming/a.csv", tickets_to_csv(generate_tickets(6, seed=1)))
    store.put("incoming/b.csv", tickets_to_csv(generate_tickets(6, seed=2)))
    manifest, etag = read_manifest(store)
    assert etag is None and [info.key for info in discover_new_batches(store, manifest)] == [
        "incoming/a.csv",
        "incoming/b.csv",
    ]

    entries = {
        info.key: manifest_entry(6, 6, info.etag, "run-1") for info in discover_new_batches(store, manifest)
    }
    commit_manifest(store, record_batches(manifest, entries, "ds-1"), etag)
    manifest, _ = read_manifest(store)
    assert discover_new_batches(store, manifest) == []
    assert manifest.dataset_version == "ds-1"

    store.put("incoming/b.csv", tickets_to_csv(generate_tickets(6, seed=3)))  # rewritten: a new version
    assert [info.key for info in discover_new_batches(store, manifest)] == ["incoming/b.csv"]


def test_a_racing_manifest_commit_is_refused(store):
    manifest, etag = read_manifest(store)
    commit_manifest(store, record_batches(manifest, {}, "ds-first"), etag)

    with pytest.raises(PreconditionFailedError):
        commit_manifest(
            store, record_batches(Manifest(), {}, "ds-second"), etag
        )  # read before the first commit
    assert read_manifest(store)[0].dataset_version == "ds-first"
