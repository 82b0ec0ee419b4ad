"""The validation rules on batches built in memory from a file's bytes, as ingestion builds them (no S3,
no Prefect API): accepted and rejected rows, the row numbers and reasons in the messages, batches
rejected whole (bad rows, thin classes, drift) and rows that repeat curated tickets."""

import csv
import gzip
import io
import json

import pytest

from retrainer.core.batch_files.formats import parsed_batch
from retrainer.core.validation import validate_batches, validation_failure
from retrainer.settings import IngestSettings, ValidationPolicy
from tests.tickets import curated_from

INGEST = IngestSettings()
LENIENT = ValidationPolicy(max_bad_row_share=1.0)


def _validated(files: dict[str, str | bytes], policy: ValidationPolicy = LENIENT, curated=None):
    """Validate the files (key -> content) of one run in order, each parsed as ingestion parses it."""
    batches = [
        parsed_batch(key, '"v1"', body.encode() if isinstance(body, str) else body, INGEST)
        for key, body in files.items()
    ]
    return validate_batches(batches, policy, INGEST.label_aliases, curated)


def _csv(rows: list[tuple[str, str, str]]) -> str:
    """A CSV batch file with these rows (quoted where a value needs it)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([("ticket_id", "text", "label"), *rows])
    return buffer.getvalue()


# Rows: each bad row named by file, row and reason; the good ones go on with their lineage.


def test_a_mixed_csv_keeps_its_good_rows_and_names_each_bad_one():
    body = (
        "ticket_id,text,label,created_at\n"
        "M-1,The export button crashes the app,bug,2026-01-05\n"
        "M-2,=cmd|' /C calc'!A0,bug,2026-01-05\n"
        "M-3,Please add a dark mode,Feature,2026-01-05\n"
        "M-4,Where is my invoice?,billing,2026-01-05\n"
        "M-1,Another text under a taken id,bug,2026-01-05\n"
        "M-6,The login page times out,bug,last tuesday\n"
    )

    [result] = _validated({"incoming/mixed.csv": body})

    assert result.problems == [
        "incoming/mixed.csv: row 2: text: looks like a spreadsheet formula (got \"=cmd|' /C calc'!A0\")",
        "incoming/mixed.csv: row 4: label: not one of bug, feature_request, general_inquiry (got 'billing')",
        "incoming/mixed.csv: row 5: duplicate ticket_id (an earlier row of this batch has it)",
        "incoming/mixed.csv: row 6: created_at: not a valid timestamp (got 'last tuesday')",
    ]
    assert result.accepted[["ticket_id", "label", "source_row"]].values.tolist() == [
        ["M-1", "bug", 1],
        ["M-3", "feature_request", 3],  # "Feature" through the label aliases
    ]
    assert set(result.accepted["source_key"]) == {"incoming/mixed.csv"}
    assert set(result.accepted["source_etag"]) == {'"v1"'}
    assert list(result.rejected["source_row"]) == [2, 4, 5, 6]
    assert len(result.accepted) + len(result.rejected) == result.rows == 6
    assert not result.rejected_whole and result.merged.empty
    assert all("billing" not in line and "tuesday" not in line for line in result.loggable_problems)


def test_a_gzipped_json_lines_batch_keeps_the_line_numbers_of_the_file():
    lines = [
        json.dumps({"ticket_id": "J-1", "text": "Crash on startup", "label": "bug"}),
        '{"ticket_id": "J-2", "text": "cut off',
        "",
        json.dumps({"ticket_id": 3, "text": "Numeric ids are read as text", "label": "question"}),
        json.dumps({"ticket_id": "J-5", "text": 12345, "label": "bug"}),
    ]

    [result] = _validated({"incoming/export.jsonl.gz": gzip.compress("\n".join(lines).encode())})

    assert [problem.split(": ", 2)[1:] for problem in result.problems] == [
        ["row 2", "invalid JSON (Unterminated string starting at at column 30)"],
        ["row 5", "text: must be text (got 12345)"],
    ]
    assert result.accepted[["ticket_id", "label", "source_row"]].values.tolist() == [
        ["J-1", "bug", 1],
        ["3", "general_inquiry", 4],
    ]


# Files: rejected whole, with every row they had quarantined.


@pytest.mark.parametrize(
    ("key", "body", "error"),
    [
        (
            "incoming/ragged.csv",
            "ticket_id,text,label\nR-1,Crash on save,bug\nR-2,Crash on load,bug,extra\n",
            "cannot parse CSV: row 2 (line 3) has 4 fields, the header has 3",
        ),
        (
            "incoming/latin1.csv",
            "ticket_id,text,label\nL-1,Caf\xe9 crashes,bug\n".encode("latin-1"),
            "not valid UTF-8 at byte 28",
        ),
        ("incoming/notes.txt", "ticket_id,text,label\n", "unsupported file type"),
    ],
)
def test_a_file_that_cannot_be_read_is_rejected_whole_with_its_reason(key, body, error):
    [result] = _validated({key: body})

    [problem] = result.problems
    assert problem.startswith(f"{key}: batch rejected: {error}")
    assert result.rejected_whole and result.accepted.empty and result.rows == 0


def test_a_file_without_a_required_column_is_rejected_with_every_row():
    body = "ticket_id,text\nN-1,Crash on save\nN-2,Dark mode please\n"

    [result] = _validated({"incoming/unlabelled.csv": body})

    assert result.problems == [
        "incoming/unlabelled.csv: batch rejected: missing required column(s) label (found: ticket_id, text)"
    ]
    assert list(result.rejected["source_row"]) == [1, 2] and result.accepted.empty
    assert all(reason.startswith("batch rejected: missing") for reason in result.rejected["reason"])


# Batches: rejected whole by the share of bad rows, the row minimums and drift.


def _ten_rows_three_bad() -> str:
    good = [(f"G-{n}", f"Ticket number {n} about the export screen", "bug") for n in range(1, 8)]
    return _csv([*good, ("B-8", "", "bug"), ("B-9", "No such label here", "urgent"), ("", "No id", "bug")])


def test_too_many_bad_rows_reject_the_batch_and_still_name_each_bad_row():
    [result] = _validated({"incoming/shaky.csv": _ten_rows_three_bad()}, ValidationPolicy())

    assert result.problems[0] == "incoming/shaky.csv: batch rejected: 30% of rows are bad (limit 20%)"
    assert [problem.split(": ")[1] for problem in result.problems[1:]] == ["row 8", "row 9", "row 10"]
    assert result.accepted.empty and list(result.rejected["source_row"]) == list(range(1, 11))
    whole = result.rejected["reason"].str.startswith("batch rejected: 30% of rows are bad")
    assert whole.tolist() == [True] * 7 + [False] * 3  # the bad rows keep their own reason


def test_too_few_rows_of_a_class_reject_the_batch():
    policy = ValidationPolicy(max_bad_row_share=0.5, min_rows_per_class=1)

    [result] = _validated({"incoming/bugs-only.csv": _ten_rows_three_bad()}, policy)

    assert result.problems[0] == (
        "incoming/bugs-only.csv: batch rejected: too few rows per class "
        "(feature_request=0, general_inquiry=0; minimum 1)"
    )
    assert result.rejected_whole and result.accepted.empty


def _uniform_tickets(prefix: str, count: int, labels: list[str], width: int) -> list[tuple[str, str, str]]:
    """Tickets with unique texts of exactly `width` characters, labels in turn."""
    return [
        (f"{prefix}-{n}", f"{prefix} ticket {n:04d} ".ljust(width, "x"), labels[n % len(labels)])
        for n in range(count)
    ]


def test_label_and_length_drift_against_the_curated_data_reject_a_batch():
    labels = ["bug", "feature_request", "general_inquiry"]
    curated = curated_from(_uniform_tickets("C", 150, labels, 40))
    only_bugs = _csv(_uniform_tickets("B", 120, ["bug"], 40))
    three_times_longer = _csv(_uniform_tickets("L", 120, labels, 120))

    bugs, longer = _validated(
        {"incoming/bugs.csv": only_bugs, "incoming/longer.csv": three_times_longer},
        ValidationPolicy(drift_min_rows=100),
        curated,
    )

    assert bugs.problems == [
        "incoming/bugs.csv: batch rejected: label drift: distribution differs from the curated data by 0.67 "
        "(total variation; limit 0.30)"
    ]
    assert longer.problems == [
        "incoming/longer.csv: batch rejected: text-length drift: median 120 characters vs 40 curated "
        "(200% change; limit 100%)"
    ]
    assert validation_failure([bugs, longer]).startswith(
        "validation failed for 2 of 2 batch(es), training skipped: incoming/bugs.csv: label drift"
    )


def test_drift_is_not_judged_below_its_minimum_and_a_run_without_rejections_does_not_fail():
    curated = curated_from(_uniform_tickets("C", 150, ["bug", "feature_request", "general_inquiry"], 40))

    results = _validated(
        {"incoming/few-bugs.csv": _csv(_uniform_tickets("B", 99, ["bug"], 40))}, curated=curated
    )

    assert results[0].problems == [] and len(results[0].accepted) == 99
    assert validation_failure(results) is None


# Repeats: of curated tickets, and of batches accepted earlier in the run.


def test_rows_repeating_curated_tickets_are_merged_or_rejected_by_their_label_and_id():
    curated = curated_from(
        [
            ("C-1", "How do I reset my password?", "general_inquiry"),
            ("C-2", "Export to PDF crashes", "bug"),
            ("C-3", "Please add a dark mode", "feature_request"),
        ]
    )
    body = _csv(
        [
            ("N-1", "  how do I RESET my\u00a0password? ", "question"),
            ("N-2", "Export to PDF crashes", "feature"),
            ("C-3", "Another text under a curated id", "bug"),
            ("N-4", "A brand new ticket", "bug"),
        ]
    )

    [result] = _validated({"incoming/new.csv": body}, curated=curated)

    assert result.problems == [
        "incoming/new.csv: row 2: the same text is curated with a different label",
        "incoming/new.csv: row 3: ticket_id already curated from another file",
    ]
    assert list(result.accepted["ticket_id"]) == ["N-4"]
    assert result.merged[["ticket_id", "duplicate_of", "source_row"]].values.tolist() == [["N-1", "C-1", 1]]
    assert result.merged["label"].tolist() == ["question"]  # merged rows keep the file's values


def test_a_rewritten_object_may_send_its_own_curated_tickets_again():
    rows = [("S-1", "Sync stops after an hour", "bug"), ("S-2", "Add a CSV export", "feature_request")]
    curated = curated_from(rows, source_key="incoming/same.csv")

    [result] = _validated(
        {"incoming/same.csv": _csv([rows[0], ("S-2", "Add a CSV and XLSX export", "feature")])},
        curated=curated,
    )

    assert result.problems == [] and result.merged.empty
    assert list(result.accepted["ticket_id"]) == ["S-1", "S-2"]


def test_a_later_batch_of_the_run_is_checked_against_the_earlier_ones():
    first = _csv([("A-1", "Crash on save", "bug"), ("A-2", "Dark mode please", "feature")])
    second = _csv([("B-1", "crash  on SAVE", "bug"), ("A-2", "Reused id with a new text", "bug")])

    one, two = _validated({"incoming/a.csv": first, "incoming/b.csv": second})

    assert list(one.accepted["ticket_id"]) == ["A-1", "A-2"] and one.problems == []
    assert two.merged[["ticket_id", "duplicate_of"]].values.tolist() == [["B-1", "A-1"]]
    assert two.problems == ["incoming/b.csv: row 2: ticket_id already curated from another file"]
