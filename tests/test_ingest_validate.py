"""Ingestion and validation against SeaweedFS: formats, aliases, row and batch checks, quarantine."""

import gzip
import io
import json

import pandas as pd
import pytest

from app.samples import generate_tickets, tickets_to_csv
from retrainer.core.validation import validate_batches
from retrainer.settings import IngestSettings, ValidationPolicy
from retrainer.storage import PreconditionFailedError
from tasks.ingest import discover_new_batches, load_batches
from tasks.manifest import Manifest, commit_manifest, manifest_entry, read_manifest, record_batches
from tasks.validate import quarantine_batch
from tests.tickets import merge_curated

LENIENT = ValidationPolicy(max_bad_row_share=1.0)
ALIASES = IngestSettings().label_aliases
BAD_ROWS = (
    b"ticket_id,text,label,created_at\n"
    b"A-1,App crashes on save,bug,2026-01-01\n"
    b"A-2,,bug,2026-01-01\n"
    b"A-3,Please add dark mode,spam,2026-01-01\n"
    b",How do I reset my password?,general_inquiry,2026-01-01\n"
    b"A-5,How do I reset my password?,Question,2026-01-01\n"
)


def _validate(store, files: dict[str, bytes], policy=LENIENT, curated=None, ingest=None):
    for key, body in files.items():
        store.put(key, body)
    infos = [info for info in store.list_objects("incoming/") if info.key in files]
    loaded = load_batches(store, infos, ingest or IngestSettings())
    return loaded, validate_batches(loaded, policy, (ingest or IngestSettings()).label_aliases, curated)


def test_bad_rows_are_named_by_file_and_row_and_good_rows_go_on_with_lineage(store):
    _, [result] = _validate(store, {"incoming/mixed.csv": BAD_ROWS})

    assert not result.rejected_whole
    assert list(result.accepted["ticket_id"]) == ["A-1", "A-5"]
    assert list(result.accepted["label"]) == ["bug", "general_inquiry"]  # "Question" through the alias map
    assert result.problems == [
        "incoming/mixed.csv: row 2: text: empty (got ''); text: shorter than 3 characters (got '')",
        "incoming/mixed.csv: row 3: label: not one of bug, feature_request, general_inquiry (got 'spam')",
        "incoming/mixed.csv: row 4: ticket_id: empty (got '')",
    ]
    assert len(result.accepted) + len(result.rejected) == result.rows == 5
    assert list(result.accepted["source_row"]) == [1, 5]
    assert set(result.accepted["source_key"]) == {"incoming/mixed.csv"}


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".parquet", ".parquet.gz"])
def test_every_format_reads_the_same_tickets(store, suffix):
    tickets = generate_tickets(30, seed=4)
    if suffix.startswith(".csv"):
        body = tickets_to_csv(tickets)
    elif suffix.startswith(".jsonl"):
        body = "".join(json.dumps(record) + "\n" for record in tickets.to_dict("records")).encode()
    else:
        buffer = io.BytesIO()
        tickets.to_parquet(buffer, index=False)
        body = buffer.getvalue()
    if suffix.endswith(".gz"):
        body = gzip.compress(body)

    _, [result] = _validate(store, {f"incoming/batch{suffix}": body})

    assert result.problems == []
    pd.testing.assert_frame_equal(
        result.accepted[list(tickets.columns)], tickets.astype(str), check_dtype=False
    )


def test_column_and_label_aliases_are_configurable(store):
    ingest = IngestSettings(
        column_aliases={"id": "ticket_id", "body": "text", "kind": "label"}, label_aliases={"defect": "bug"}
    )
    body = b"id,body,kind\nK-1,The editor crashes on save,Defect\n"

    _, [result] = _validate(store, {"incoming/aliased.csv": body}, ingest=ingest)

    assert result.accepted[["ticket_id", "text", "label"]].values.tolist() == [
        ["K-1", "The editor crashes on save", "bug"]
    ]


def test_a_title_column_becomes_the_first_line_of_the_text(store):
    body = (
        b"ticket_id,title,body,label\n"
        b"T-1,Crash on save,The editor closes when I save,bug\n"
        b"T-2,Dark mode please,,feature\n"
        b"T-3,,How do I export my data?,question\n"
        b"T-4,,,bug\n"
    )

    _, [result] = _validate(store, {"incoming/issues.csv": body})

    assert result.accepted[["ticket_id", "text"]].values.tolist() == [
        ["T-1", "Crash on save\nThe editor closes when I save"],
        ["T-2", "Dark mode please"],
        ["T-3", "How do I export my data?"],
    ]
    assert result.rejected["ticket_id"].tolist() == ["T-4"]  # no title and no body: quarantined, not dropped


def test_duplicates_conflicts_and_eval_leakage_against_curated_data(store):
    curated = merge_curated(
        None,
        generate_tickets(300, seed=1, id_prefix="old").assign(
            source_key="incoming/old.csv", source_etag="e", source_row=1
        ),
        0.2,
        0.1,
    )
    eval_row = curated[curated["split"] == "eval"].iloc[0]
    eval_text, eval_label, eval_id = eval_row["text"], eval_row["label"], eval_row["ticket_id"]
    train_text = curated[curated["split"] == "train"]["text"].iloc[0]
    train_label = curated[curated["split"] == "train"]["label"].iloc[0]
    other_label = "bug" if train_label != "bug" else "feature_request"
    leaking_id = next(f"L-{n}" for n in range(1000) if _split(f"L-{n}") == "train")
    rows = pd.DataFrame(
        {
            "ticket_id": [curated["ticket_id"].iloc[0], leaking_id, "N-2", "N-3"],
            "text": [
                "A brand new ticket about exports",
                eval_text.upper(),
                train_text,
                "Another new ticket text",
            ],
            "label": ["bug", eval_label, other_label, "bug"],
        }
    )

    _, [result] = _validate(store, {"incoming/new.csv": tickets_to_csv(rows)}, curated=curated)

    assert result.problems == [
        "incoming/new.csv: row 1: ticket_id already curated from another file",
        "incoming/new.csv: row 3: the same text is curated with a different label",
    ]
    assert list(result.accepted["ticket_id"]) == ["N-3"]
    # An eval text with its label is merged into the eval ticket: not curated again, so nothing leaks.
    assert result.merged[["ticket_id", "duplicate_of"]].values.tolist() == [[leaking_id, eval_id]]


def test_a_rewritten_object_may_update_its_own_tickets(store):
    first = generate_tickets(30, seed=1, id_prefix="same")
    curated = merge_curated(
        None, first.assign(source_key="incoming/same.csv", source_etag="old", source_row=1), 0.2, 0.1
    )

    _, [result] = _validate(store, {"incoming/same.csv": tickets_to_csv(first)}, curated=curated)

    assert result.problems == [] and len(result.accepted) == 30


def _split(ticket_id: str) -> str:
    from tasks.dataset import assign_split

    return assign_split(ticket_id, 0.2, 0.1)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ValidationPolicy(max_bad_row_share=0.1), "60% of rows are bad (limit 10%)"),
        (
            ValidationPolicy(max_bad_row_share=1.0, min_rows_per_batch=3),
            "2 good row(s), fewer than the minimum of 3",
        ),
        (
            ValidationPolicy(max_bad_row_share=1.0, min_rows_per_class=1),
            "too few rows per class (feature_request=0; minimum 1)",
        ),
    ],
)
def test_batch_level_rules_reject_the_whole_batch_with_every_row_quarantined(store, policy, expected):
    _, [result] = _validate(store, {"incoming/mixed.csv": BAD_ROWS}, policy=policy)

    assert result.rejected_whole and result.accepted.empty
    assert result.problems[0] == f"incoming/mixed.csv: batch rejected: {expected}"
    assert len(result.rejected) == 5


def test_label_and_length_drift_against_the_curated_data(store):
    curated = merge_curated(
        None, generate_tickets(300, seed=1).assign(source_key="k", source_etag="e", source_row=1), 0.2, 0.1
    )
    only_bugs = generate_tickets(600, seed=2, id_prefix="d").query("label == 'bug'")
    long_texts = generate_tickets(150, seed=3, id_prefix="l").assign(
        text=lambda f: f["text"] + " details" * 40
    )
    policy = ValidationPolicy(drift_min_rows=100)

    _, [labels, lengths] = _validate(
        store,
        {"incoming/a-bugs.csv": tickets_to_csv(only_bugs), "incoming/b-long.csv": tickets_to_csv(long_texts)},
        policy=policy,
        curated=curated,
    )

    assert "label drift: distribution differs from the curated data by 0.67" in labels.problems[0]
    assert "text-length drift: median" in lengths.problems[0] and lengths.rejected_whole


def test_rejected_rows_and_files_are_quarantined_in_s3_with_reasons(store):
    loaded, results = _validate(store, {"incoming/mixed.csv": BAD_ROWS, "incoming/x.xlsx": b"PK\x03\x04"})

    keys = [
        key
        for batch, result in zip(loaded, results, strict=True)
        for key in quarantine_batch(store, "run-1", result, batch.raw)
    ]

    assert keys == [
        "quarantine/run-1/mixed.csv.errors.json",
        "quarantine/run-1/mixed.csv.rejected.csv",
        "quarantine/run-1/x.xlsx.errors.json",
        "quarantine/run-1/x.xlsx",
    ]
    report = json.loads(store.get(keys[0])[0])
    assert report["source_key"] == "incoming/mixed.csv" and len(report["problems"]) == 3
    rejected = pd.read_csv(io.BytesIO(store.get(keys[1])[0]), dtype=str, keep_default_na=False)
    assert list(rejected["source_row"]) == ["2", "3", "4"]
    assert store.get(keys[3])[0] == b"PK\x03\x04"


def test_discovery_skips_recorded_objects_until_their_content_changes(store):
    store.put("incoming/a.csv", tickets_to_csv(generate_tickets(6, seed=1)))
    store.put("incoming/b.csv", tickets_to_csv(generate_tickets(6, seed=2)))
    manifest, etag = read_manifest(store)
    found = discover_new_batches(store, manifest)
    assert etag is None and [info.key for info in found] == ["incoming/a.csv", "incoming/b.csv"]

    entries = {info.key: manifest_entry(6, 6, info.etag, "run-1") for info in found}
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


def test_objects_over_the_size_limit_are_not_downloaded(store):
    loaded, [result] = _validate(
        store, {"incoming/big.csv": BAD_ROWS}, ingest=IngestSettings(max_object_bytes=10)
    )

    assert loaded[0].raw == b""
    assert f"object is {len(BAD_ROWS)} bytes, over the limit of 10" in result.problems[0]
