"""Validation rules on in-memory batches: invisible text, duplicate texts (merged, not rejected),
rejected rows as they were in the file, report wording, and the speed of the checks against curated data."""

import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.samples import generate_tickets, tickets_to_csv
from retrainer.core import curated_profile
from retrainer.core.batch_files import BatchFormatError, LoadedBatch
from retrainer.core.batch_files.formats import parse_batch
from retrainer.core.curated_profile import CuratedProfile, KeyedRows, string_hashes
from retrainer.core.row_rules import FORMULA_PATTERN, looks_like_formula
from retrainer.core.validation import validate_batch, validate_batches
from retrainer.records import RunRecord
from retrainer.report.markdown import render_run_markdown, render_validation_markdown, validation_table
from retrainer.run_steps import Ingestion
from retrainer.settings import IngestSettings, ValidationPolicy
from tasks.manifest import manifest_entry
from tasks.validate import quarantine_batch
from tests.tickets import curated_from

CORPUS = Path(__file__).parent / "data" / "malformed"
ALIASES = IngestSettings().label_aliases
LENIENT = ValidationPolicy(max_bad_row_share=1.0)
PASSWORD = "How do I reset my password?"


def _batch(rows: list[tuple], key: str = "incoming/b.csv", columns=("ticket_id", "text", "label")):
    """A batch parsed from CSV bytes in memory, exactly as a file in ``incoming/`` would be."""
    raw = tickets_to_csv(pd.DataFrame(rows, columns=list(columns)))
    return LoadedBatch(key=key, etag='"e"', raw=raw, frame=parse_batch(raw, key), error=None)


def _validate(batch: LoadedBatch, policy=LENIENT, curated: pd.DataFrame | None = None):
    [result] = validate_batches([batch], policy, ALIASES, curated)
    return result


# A. A text without a visible character is empty.


@pytest.mark.parametrize(
    "text",
    [
        "\u200b" * 4,
        "\u200b" * 6,
        "\u200b\u200c\u200d\u2060\ufeff",  # zero-width space, (non-)joiner, word joiner, BOM
        "\u00a0\u3000\u2028\u2029",  # no-break space, ideographic space, line and paragraph separators
        "\u2800\u2800\u2800",  # braille blank
        "\u3164\u3164\u3164",  # hangul filler
        "\u200b \t\u200b\u00ad",  # mixed with ASCII whitespace and a soft hyphen
    ],
)
def test_a_text_without_a_visible_character_is_empty(text):
    result = _validate(_batch([("Z-1", text, "bug"), ("Z-2", "Crash on save", "bug")]))

    assert list(result.accepted["ticket_id"]) == ["Z-2"]
    [problem] = result.problems
    assert problem.startswith("incoming/b.csv: row 1: text: empty (got ")


def test_an_id_without_a_visible_character_is_empty():
    result = _validate(_batch([("\u200b\u200b", "Crash on save", "bug")]))

    assert result.problems[-1].startswith("incoming/b.csv: row 1: ticket_id: empty (got '\\u200b\\u200b')")


def test_the_minimum_length_counts_visible_characters():
    policy = ValidationPolicy(max_bad_row_share=1.0, min_text_chars=3)
    rows = [
        ("S-1", "ok\u200b\u200b\u200b", "bug"),  # 5 characters, 2 visible
        ("S-2", "a \u200b b", "bug"),  # 2 visible
        ("S-3", "Hi👋", "bug"),  # an emoji is visible
        ("S-4", "e\u0301te", "bug"),  # a combining accent belongs to its letter: 4 code points
        ("S-5", "ошибка", "bug"),
    ]

    result = _validate(_batch(rows), policy)

    assert list(result.rejected["ticket_id"]) == ["S-1", "S-2"]
    assert all("text: shorter than 3 characters" in reason for reason in result.rejected["reason"])
    assert list(result.accepted["ticket_id"]) == ["S-3", "S-4", "S-5"]


def test_a_minimum_beyond_the_regex_limit_counts_visible_characters_too():
    policy = ValidationPolicy(max_bad_row_share=1.0, min_text_chars=1500)
    rows = [("M-1", "x" * 1499 + "\u200b" * 9, "bug"), ("M-2", "x" * 1500, "bug")]

    result = _validate(_batch(rows), policy)

    assert list(result.rejected["ticket_id"]) == ["M-1"] and list(result.accepted["ticket_id"]) == ["M-2"]


@pytest.mark.parametrize(
    "cell",
    [
        "=cmd|' /C calc'!A0",
        " @SUM(1)",
        "+HYPERLINK(x)",
        "-x!",
        "\u00a0=1",
        "\x0b=1",
        "\u3000+a(",
        "+1 for this",
        "a=b",
        "-- dash",
        "Crash",
        "\u200b=1",
    ],
)
def test_the_vectorised_formula_check_agrees_with_the_python_pattern(cell):
    assert bool(looks_like_formula(pd.Series([cell]))[0]) == bool(re.match(FORMULA_PATTERN, cell))


def test_invisible_characters_do_not_make_a_text_different():
    result = _validate(
        _batch(
            [
                ("P-1", PASSWORD, "general_inquiry"),
                ("P-2", "How do\u200b I reset my\u00a0password?", "general_inquiry"),
            ]
        )
    )

    assert list(result.accepted["ticket_id"]) == ["P-1"]
    assert list(result.merged["duplicate_of"]) == ["P-1"]


def test_curated_data_read_from_several_parts_is_compared_too():
    """Curated data read from several Parquet parts holds its texts in Arrow chunks (a regression: the
    third night of a bucket failed to validate)."""
    parts = []
    for part in (
        curated_from([("C-1", "The app  crashes\u200b on save", "bug")]),
        curated_from([("C-2", "Add a dark mode", "feature_request")]),
    ):
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        parts.append(pd.read_parquet(io.BytesIO(buffer.getvalue())))
    curated = pd.concat(parts, ignore_index=True)

    result = _validate(
        _batch([("N-1", "the app crashes on save", "bug"), ("N-2", "Export to CSV", "feature_request")]),
        curated=curated,
    )

    assert list(result.accepted["ticket_id"]) == ["N-2"]
    assert list(result.merged["duplicate_of"]) == ["C-1"]


# B. Checks against the curated data take time linear in the rows.


def test_a_large_batch_against_a_large_curated_set_merges_only_the_repeats_with_their_label(monkeypatch):
    # Its speed (linear, not quadratic as with np.isin over object arrays) is measured by
    # benchmarks/validation_speed.py --curated; this checks the result at that scale.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from validation_speed import curated_tickets, repeating_curated_texts, synthetic_tickets

    curated = curated_tickets(50_000)
    frame = repeating_curated_texts(synthetic_tickets(50_000), curated)
    batch = LoadedBatch(key="incoming/bench.csv", etag='"e"', raw=b"", frame=frame, error=None)

    result = _validate(batch, ValidationPolicy(max_bad_row_share=0.5), curated)

    assert 200 < len(result.merged) < 300 and len(result.accepted) > 48_000  # 1% repeats, half merged


def test_keyed_rows_find_the_latest_value_of_each_key_across_chunks():
    table = KeyedRows("value")
    for start, count in [(0, 5), (3, 2), (0, 1), (100, 8), (4, 1)]:  # chunks merge as they come
        keys = np.array([f"k{n}" for n in range(start, start + count)], dtype=object)
        table.add(keys, string_hashes(keys), value=np.array([f"{key}@{start}" for key in keys], dtype=object))

    keys = np.array(["k0", "k3", "k4", "k5", "k107", "missing"], dtype=object)
    found = table.get(keys, string_hashes(keys))["value"]

    assert list(found) == ["k0@0", "k3@3", "k4@4", None, "k107@100", None]
    assert len(table.chunks) <= 3


def test_colliding_hashes_never_match_a_wrong_row(monkeypatch):
    """Every string hashing alike is the worst case: the results must not change, only the speed."""
    batch = _batch([*_thirty_rows_three_texts(), ("C-1", "Crash", "bug"), ("C-2", "crash", "feature")])
    curated = curated_from([("old-pw", PASSWORD, "general_inquiry"), ("old-x", "Exports fail", "bug")])
    expected = _validate(batch, curated=curated)

    monkeypatch.setattr(
        curated_profile, "string_hashes", lambda values: np.zeros(len(values), dtype=np.int64)
    )
    colliding = _validate(batch, curated=curated)

    pd.testing.assert_frame_equal(colliding.accepted, expected.accepted)
    pd.testing.assert_frame_equal(colliding.merged, expected.merged)
    assert colliding.problems == expected.problems
    assert list(expected.merged["duplicate_of"][:4]) == ["old-pw", "old-pw", "D-1", "D-2"]
    assert len(expected.problems) == 2  # "Crash" / "crash" with two labels


def test_the_profile_median_length_matches_numpy():
    profile = CuratedProfile()
    for texts in (["abc", "abcdef"], ["a" * 10, "ab", "abcd"], ["x" * 7]):
        rows = pd.DataFrame({"ticket_id": texts, "text": texts, "label": "bug", "source_key": "k"})
        profile.add(rows)

    assert profile.median_length() == 5.0  # lengths 2, 3, 4, 6, 7, 10 -> (4 + 6) / 2


# C. Duplicate texts: the same label is merged, a different label is a bad row.


def _thirty_rows_three_texts() -> list[tuple]:
    texts = [(PASSWORD, "general_inquiry"), ("The app crashes on save", "bug"), ("Add dark mode", "feature")]
    return [(f"D-{n}", *texts[n % 3]) for n in range(30)]


def test_thirty_tickets_with_three_texts_are_three_curated_rows_and_27_merged():
    result = _validate(_batch(_thirty_rows_three_texts()), ValidationPolicy())  # default: 20% bad at most

    assert not result.rejected_whole and result.problems == [] and result.rejected.empty
    assert list(result.accepted["ticket_id"]) == ["D-0", "D-1", "D-2"]
    assert len(result.merged) == 27
    assert list(result.merged["duplicate_of"][:4]) == ["D-0", "D-1", "D-2", "D-0"]
    assert list(result.merged["source_row"][:2]) == [4, 5]
    assert list(result.merged["label"][:3]) == ["general_inquiry", "bug", "feature"]  # as in the file


def test_the_same_text_with_different_labels_is_still_rejected():
    rows = [("C-1", PASSWORD, "general_inquiry"), ("C-2", PASSWORD.upper(), "bug"), ("C-3", "Crash", "bug")]

    result = _validate(_batch(rows))

    assert result.problems == [
        "incoming/b.csv: row 1: the same text appears with different labels in this batch",
        "incoming/b.csv: row 2: the same text appears with different labels in this batch",
    ]
    assert result.merged.empty and list(result.accepted["ticket_id"]) == ["C-3"]


def test_merged_rows_do_not_count_as_bad_but_bad_rows_still_do():
    rows = [*_thirty_rows_three_texts(), ("X-1", "", "bug"), ("X-2", "Crash on load", "spam")]

    result = _validate(_batch(rows), ValidationPolicy(max_bad_row_share=0.1))  # 2 of 32 bad: 6%

    assert not result.rejected_whole
    assert (len(result.accepted), len(result.merged), len(result.rejected)) == (3, 27, 2)


def test_the_same_text_as_a_curated_ticket_is_merged_with_its_label_and_rejected_without():
    curated = curated_from(
        [(f"old-{n}", f"Curated ticket number {n} about exports", "bug") for n in range(40)]
        + [("old-pw", PASSWORD, "general_inquiry")]
    )
    in_eval = curated[curated["split"] == "eval"].iloc[0]
    in_train = curated[curated["split"] == "train"].iloc[0]
    rows = [
        ("N-1", f"  {PASSWORD.lower()} ", "question"),  # "question" is general_inquiry after the alias
        ("N-2", in_eval["text"], "bug"),  # an eval text with its label: merged, nothing leaks
        ("N-3", in_train["text"], "feature"),
        ("N-4", "A brand new ticket", "bug"),
    ]

    result = _validate(_batch(rows), curated=curated)

    assert list(result.accepted["ticket_id"]) == ["N-4"]
    assert list(result.merged["ticket_id"]) == ["N-1", "N-2"]
    assert list(result.merged["duplicate_of"]) == ["old-pw", in_eval["ticket_id"]]
    assert result.problems == ["incoming/b.csv: row 3: the same text is curated with a different label"]


def test_merged_rows_are_not_taken_into_the_profile_twice():
    profile = CuratedProfile()
    first = _batch(_thirty_rows_three_texts(), key="incoming/one.csv")
    second = _batch(
        [("E-1", PASSWORD, "general_inquiry"), ("E-2", "Something else", "bug")], "incoming/two.csv"
    )

    one = validate_batch(first, LENIENT, ALIASES, profile)
    two = validate_batch(second, LENIENT, ALIASES, profile)

    assert len(one.accepted) == 3 and profile.rows == 4
    assert list(two.merged["duplicate_of"]) == ["D-0"] and list(two.accepted["ticket_id"]) == ["E-2"]


def test_merged_rows_are_quarantined_as_merged_csv_and_counted(store, caplog):
    batch = _batch(_thirty_rows_three_texts(), key="incoming/dupes.csv")
    result = _validate(batch)

    with caplog.at_level(logging.INFO, logger="retrainer"):
        keys = quarantine_batch(store, "run-9", result, batch.raw)

    assert keys == ["quarantine/run-9/dupes.csv.merged.csv"]
    merged = pd.read_csv(io.BytesIO(store.get(keys[0])[0]), dtype=str, keep_default_na=False)
    assert len(merged) == 27 and list(merged["duplicate_of"][:3]) == ["D-0", "D-1", "D-2"]
    assert list(merged["source_row"][:3]) == ["4", "5", "6"]
    assert "27" in caplog.text and PASSWORD not in caplog.text
    entry = manifest_entry(rows=30, accepted=3, etag="e", run_id="run-9", merged=27)
    assert (entry.merged, entry.quarantined) == (27, 0)
    report = render_validation_markdown("run-9", [result])
    assert "| `incoming/dupes.csv` | 30 | 3 | 27 | 0 | ok |" in report
    assert validation_table([result])[0]["merged"] == 27


def test_the_run_counts_merged_rows_apart_from_quarantined_ones():
    from flows.retrain import _manifest_entry

    result = _validate(_batch([*_thirty_rows_three_texts(), ("X-1", "", "bug")]))

    record = RunRecord(status="no-data", run_id="run-5", **dict(Ingestion(None, "ds-1", [result]).facts()))

    assert (record.rows_accepted, record.rows_merged, record.rows_quarantined) == (3, 27, 1)
    assert "rows accepted 3, merged 27, quarantined 1" in render_run_markdown(record)
    entry = _manifest_entry(result, "run-5")
    assert (entry.rows, entry.accepted, entry.merged, entry.quarantined) == (31, 3, 27, 1)


def test_a_batch_rejected_whole_merges_nothing():
    rows = [*_thirty_rows_three_texts(), ("X-1", "", "bug")]

    result = _validate(_batch(rows), ValidationPolicy(min_rows_per_class=20))

    assert result.rejected_whole and result.merged.empty and len(result.rejected) == 31


# D. Rejected rows as they were in the file; report wording.


def test_rejected_rows_keep_the_values_of_the_file(store):
    rows = [(" A-1 ", "", "Question"), ("A-2", "Crash on save", "SPAM"), ("A-3", "Fine ticket", "Bug")]
    batch = _batch(rows, key="incoming/orig.csv")

    result = _validate(batch)
    keys = quarantine_batch(store, "run-7", result, batch.raw)

    assert list(result.accepted["label"]) == ["bug"]  # curated rows are normalised...
    rejected = pd.read_csv(io.BytesIO(store.get(keys[1])[0]), dtype=str, keep_default_na=False)
    assert list(rejected["ticket_id"]) == [" A-1 ", "A-2"]  # ...rejected rows are not
    assert list(rejected["label"]) == ["Question", "SPAM"]
    assert list(rejected["source_row"]) == ["1", "2"]
    assert "got 'SPAM'" in rejected["reason"][1]


def _corpus_batches() -> list[LoadedBatch]:
    batches = []
    for path in sorted(CORPUS.iterdir()):
        raw, key = path.read_bytes(), f"incoming/{path.name}"
        try:
            batches.append(LoadedBatch(key, '"e"', raw, parse_batch(raw, key), None))
        except BatchFormatError as error:
            batches.append(LoadedBatch(key, '"e"', raw, None, str(error)))
    return batches


def test_report_reasons_carry_no_fragments_of_the_values():
    batches = validate_batches(_corpus_batches(), ValidationPolicy(), ALIASES, None)

    report = render_validation_markdown("run", batches)

    reasons = [line for line in report.splitlines() if line.startswith("- **")]
    assert "- **3** × text: looks like a spreadsheet formula" in reasons
    assert "- **1** × ticket\\_id: looks like a spreadsheet formula" in reasons
    assert "- **3** × text: empty; text: shorter than 3 characters" in reasons
    for line in reasons:
        kind = line.split(" × ", 1)[1]
        assert "(got" not in kind and not kind.endswith((" ", "'", '"', "')", '")')), line
        assert " ;" not in kind, line


def test_a_batch_without_a_text_column_shows_no_nan_example():
    raw = b"ticket_id,label\nM-1,bug\n"
    batch = LoadedBatch("incoming/notext.csv", '"e"', raw, parse_batch(raw, "incoming/notext.csv"), None)

    report = render_validation_markdown("run", [_validate(batch)], text_previews=True)

    assert "`incoming/notext.csv` row 1: (no text)" in report
    assert "nan" not in report


def test_problems_logged_while_quarantining_carry_no_ticket_text(store, caplog):
    batch = _batch([("L-1", "secret customer words", "spam"), ("L-2", "Hi", "bug")])
    result = _validate(batch)

    with caplog.at_level(logging.INFO, logger="retrainer"):
        quarantine_batch(store, "run-8", result, batch.raw)

    assert "row 1: label: not one of" in caplog.text and "row 2: text: shorter than" in caplog.text
    assert "secret" not in caplog.text and "spam" not in caplog.text and "'Hi'" not in caplog.text
    assert "(got 'spam')" in result.problems[1]  # the values stay in the quarantined errors.json


def test_generated_tickets_still_validate_cleanly():
    raw = tickets_to_csv(generate_tickets(60, seed=5))
    result = _validate(LoadedBatch("incoming/g.csv", '"e"', raw, parse_batch(raw, "incoming/g.csv"), None))

    assert result.problems == [] and len(result.accepted) == 60 and result.merged.empty
