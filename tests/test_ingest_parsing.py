"""Parsing batch files: ragged and badly quoted CSV rows, gzip bombs, misnamed binary files, text in another
encoding or with another separator.

Every such file is rejected whole with a message naming the file, the row and the reason (and what the file
really is: UTF-16, semicolon-separated, a PNG ...), every time (the CSV checks do not depend on
process-global state such as the warnings filters), and decompression stops at ``max_decompressed_bytes``
with bounded memory. Header names match the known columns ignoring case, spaces and hyphens.
"""

import codecs
import gzip
import io
import threading
import tracemalloc
import warnings
import zlib

import pandas as pd
import pytest

from retrainer.core.batch_files import BatchFormatError
from retrainer.core.batch_files.formats import parse_batch
from retrainer.core.validation import validate_batches
from retrainer.settings import IngestSettings, ValidationPolicy
from tasks.ingest import load_batches
from tasks.validate import quarantine_batch

MiB = 2**20
HEADER = "ticket_id,text,label\n"


def _ragged_csv(rows: int, ragged_row: int) -> bytes:
    """A 3-column CSV whose record `ragged_row` (1-based) has a 4th field."""
    lines = [HEADER]
    for number in range(1, rows + 1):
        extra = ",lost-field" if number == ragged_row else ""
        lines.append(f"R-{number},Crash number {number} on save,bug{extra}\n")
    return "".join(lines).encode()


def _parse_error(raw: bytes, key: str, **kwargs) -> str:
    with pytest.raises(BatchFormatError) as error:
        parse_batch(raw, key, **kwargs)
    return str(error.value)


def _gzip_bomb(decompressed_bytes: int) -> bytes:
    """Gzip of `decompressed_bytes` of CSV, compressed block by block (never all in memory)."""
    row = b"B-1,crash on save when the file is large,bug\n"
    block = row * (MiB // len(row))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    parts = [compressor.compress(HEADER.encode())]
    parts += [compressor.compress(block) for _ in range(decompressed_bytes // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


# --- ragged rows ---------------------------------------------------------------------------------


def test_sixteen_ragged_csvs_loaded_together_are_all_rejected_every_time(store):
    # A 4th field in the first data row is the case pandas only warned about (the old race);
    # later rows are checked too.
    ragged_rows = {
        f"incoming/ragged-{index:02d}.csv": 1 if index % 4 else 7 + 50 * index for index in range(16)
    }
    for key, ragged_row in ragged_rows.items():
        store.put(key, _ragged_csv(2_000, ragged_row))
    infos = store.list_objects("incoming/")
    assert len(infos) == 16

    accepted, errors = [], set()
    for _ in range(20):
        for batch in load_batches(store, infos, IngestSettings(max_concurrency=16)):
            if batch.frame is not None:
                accepted.append(batch.key)  # curated with the 4th field dropped
            errors.add(batch.error)

    assert accepted == []
    assert errors == {
        f"{key}: cannot parse CSV: row {row} (line {row + 1}) has 4 fields, the header has 3"
        for key, row in ragged_rows.items()
    }


def test_a_ragged_csv_is_rejected_while_another_thread_changes_the_warnings_filters():
    """The old check turned pandas' ParserWarning into an error with the process-global warnings
    filters: any other thread entering ``warnings.catch_warnings()`` could switch it off."""
    stop = threading.Event()

    def meddle_with_warnings() -> None:
        while not stop.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")

    meddler = threading.Thread(target=meddle_with_warnings, daemon=True)
    meddler.start()
    try:
        accepted = 0
        for _ in range(200):
            try:
                parse_batch(_ragged_csv(300, 1), "incoming/ragged.csv")
                accepted += 1
            except BatchFormatError:
                pass
    finally:
        stop.set()
        meddler.join()
    assert accepted == 0


def test_the_ragged_record_is_named_by_row_and_physical_line():
    raw = b'ticket_id,text,label\n\nA-1,"two\nlines",bug\nA-2,ok text,bug\nA-3,ok text,bug\nA-4,x,bug,extra\n'
    assert _parse_error(raw, "incoming/r.csv") == (
        "incoming/r.csv: cannot parse CSV: row 4 (line 7) has 4 fields, the header has 3"
    )


def test_every_record_having_one_field_more_than_the_header_is_rejected():
    raw = HEADER.encode() + b"".join(b"A-%d,Crash on save,bug,\n" % number for number in range(600))
    assert _parse_error(raw, "incoming/trailing-commas.csv") == (
        "incoming/trailing-commas.csv: cannot parse CSV: row 1 (line 2) has 4 fields, the header has 3"
    )


def test_a_record_with_fewer_fields_than_the_header_is_rejected_too():
    raw = b"ticket_id,text,label\nA-1,Crash on save,bug\nA-2,Crash on load\n"
    assert _parse_error(raw, "incoming/short.csv") == (
        "incoming/short.csv: cannot parse CSV: row 2 (line 3) has 2 fields, the header has 3"
    )


# --- quotes --------------------------------------------------------------------------------------


def test_an_unbalanced_quote_is_rejected_not_guessed_at():
    raw = b'ticket_id,text,label\n"u-0","fine",bug\n"u-1","it says "error" then dies,bug\n'
    error = _parse_error(raw, "incoming/quotes.csv")
    assert error.startswith("incoming/quotes.csv: cannot parse CSV: row 2 (line 3): ")
    assert "quote" in error


def test_an_unterminated_quote_at_the_end_of_the_file_is_rejected():
    raw = b'ticket_id,text,label\nQ-1,fine,bug\nQ-2,"Crash on save,bug\nQ-3,more,bug\n'
    assert _parse_error(raw, "incoming/open.csv") == (
        "incoming/open.csv: cannot parse CSV: row 2 (line 3): a quoted field is not closed before "
        "the end of the file"
    )


def test_quoted_newlines_doubled_quotes_bom_crlf_and_blank_lines_parse_as_before():
    raw = (
        b'\xef\xbb\xbfticket_id,text,label\r\n\r\nA-1,"Crash on save\r\nwhen large",bug\r\n'
        b'   \r\nA-2,"Add ""dark"" mode, please",feature_request\r\nA-3,,bug\r\n'
    )
    frame = parse_batch(raw, "incoming/ok.csv")

    assert list(frame.columns) == ["ticket_id", "text", "label", "_row"]
    assert list(frame["ticket_id"]) == ["A-1", "A-2", "A-3"]
    assert list(frame["text"]) == ["Crash on save\r\nwhen large", 'Add "dark" mode, please', ""]
    assert list(frame["_row"]) == [1, 2, 3]
    assert all(pd.api.types.is_string_dtype(frame[column]) for column in ("ticket_id", "text", "label"))


def test_a_header_only_csv_is_an_empty_frame_with_the_header_columns():
    frame = parse_batch(b"ticket_id,text,label\n", "incoming/h.csv")
    assert list(frame.columns) == ["ticket_id", "text", "label", "_row"] and frame.empty


def test_the_csv_parse_is_the_same_as_pandas_for_a_well_formed_file():
    raw = b'ticket_id,text,label,created_at\nA-1,"a, b",bug,2026-03-01\nA-2, spaced ,bug,\nA-3,NA,bug,null\n'
    expected = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, index_col=False)
    frame = parse_batch(raw, "incoming/same.csv").drop(columns=["_row"])
    pd.testing.assert_frame_equal(frame, expected)


# --- decompression limit -------------------------------------------------------------------------


def test_a_gzip_bomb_is_rejected_while_decompressing_with_bounded_memory():
    limit = 4 * MiB
    bomb = _gzip_bomb(200 * MiB)
    assert len(bomb) < MiB

    tracemalloc.start()
    try:
        error = _parse_error(bomb, "incoming/bomb.csv.gz", max_decompressed_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert error == (
        f"incoming/bomb.csv.gz: decompresses to more than {limit} bytes, the limit "
        "(max_decompressed_bytes); not read further"
    )
    # The module's documented bound: the limit, the output buffer's growth slack (1/8), ~1 MiB buffers.
    assert peak < limit + limit // 8 + 2 * MiB, peak  # the old gzip.decompress held all 200 MiB


def test_a_gzip_file_within_the_limit_is_read_and_concatenated_members_still_work():
    first, second = HEADER.encode() + b"A-1,Crash on save,bug\n", b"A-2,Crash on load,bug\n"
    raw = gzip.compress(first) + gzip.compress(second)
    frame = parse_batch(raw, "incoming/ok.csv.gz", max_decompressed_bytes=len(first + second))
    assert list(frame["ticket_id"]) == ["A-1", "A-2"]
    limit = len(first + second) - 1
    assert _parse_error(raw, "incoming/ok.csv.gz", max_decompressed_bytes=limit) == (
        f"incoming/ok.csv.gz: decompresses to more than {limit} bytes, the limit "
        "(max_decompressed_bytes); not read further"
    )


def test_an_over_limit_gzip_is_quarantined_as_its_compressed_bytes_with_no_rejected_rows(store):
    bomb = _gzip_bomb(64 * MiB)
    store.put("incoming/bomb.csv.gz", bomb)
    settings = IngestSettings(max_decompressed_bytes=2 * MiB)

    [loaded] = load_batches(store, store.list_objects("incoming/"), settings)
    [validated] = validate_batches([loaded], ValidationPolicy(), {}, None)
    keys = quarantine_batch(store, "run-1", validated, loaded.raw)

    assert loaded.frame is None and loaded.error.startswith("incoming/bomb.csv.gz: decompresses to more than")
    assert validated.rejected_whole and validated.rows == 0
    assert keys == ["quarantine/run-1/bomb.csv.gz.errors.json", "quarantine/run-1/bomb.csv.gz"]
    assert store.get("quarantine/run-1/bomb.csv.gz")[0] == bomb  # the original compressed bytes
    assert [info.key for info in store.list_objects("quarantine/")] == keys[::-1]  # no rejected.csv


def test_the_decompression_limit_defaults_to_the_object_size_limit():
    settings = IngestSettings()
    assert settings.max_decompressed_bytes == settings.max_object_bytes == 256 * MiB


# --- binary data under a text name ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "body", "expected"),
    [
        (
            "incoming/x.csv",
            gzip.compress(b"ticket_id,text,label\nA-1,Crash on save,bug\n"),
            "incoming/x.csv: gzip-compressed data in a file named .csv (name it .csv.gz)",
        ),
        (
            "incoming/x.jsonl",
            gzip.compress(b'{"ticket_id": "A-1"}\n'),
            "incoming/x.jsonl: gzip-compressed data in a file named .jsonl (name it .jsonl.gz)",
        ),
        (
            "incoming/x.parquet",
            gzip.compress(b"PAR1...PAR1"),
            "incoming/x.parquet: gzip-compressed data in a file named .parquet (name it .parquet.gz)",
        ),
        (
            "incoming/x.csv.gz",
            gzip.compress(gzip.compress(b"ticket_id,text,label\n")),
            "incoming/x.csv.gz: gzip-compressed data in a file named .csv.gz (compressed twice)",
        ),
        (
            "incoming/x.csv",
            b"PK\x03\x04\x14\x00\x00\x00",
            "incoming/x.csv: a zip archive (an .xlsx workbook or a .zip) in a file named .csv "
            "(export or unzip it as .csv)",
        ),
        (
            "incoming/x.csv",
            b"PAR1\x15\x04\x15\x1c",
            "incoming/x.csv: Parquet data in a file named .csv (name it .parquet)",
        ),
        (
            "incoming/x.jsonl",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "incoming/x.jsonl: a PNG image in a file named .jsonl (not a batch of tickets: export them as "
            ".csv, .jsonl or .parquet)",
        ),
        (
            "incoming/x.parquet",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
            "incoming/x.parquet: a PDF document in a file named .parquet (not a batch of tickets: export "
            "them as .csv, .jsonl or .parquet)",
        ),
    ],
    ids=[
        "gzip-as-csv",
        "gzip-as-jsonl",
        "gzip-as-parquet",
        "gzip-twice",
        "zip-as-csv",
        "parquet-as-csv",
        "png-as-jsonl",
        "pdf-as-parquet",
    ],
)
def test_binary_data_under_a_text_name_is_named_by_what_it_is(key, body, expected):
    assert _parse_error(body, key) == expected


# --- text that is not what its name says: another encoding, another separator, an unquoted formula ---


@pytest.mark.parametrize(
    ("key", "body", "expected"),
    [
        (
            "incoming/x.csv",
            (HEADER + "A-1,Crash on save,bug\n").encode("utf-16"),
            "incoming/x.csv: UTF-16 (little-endian) text with a byte-order mark, not UTF-8: save it as UTF-8",
        ),
        (
            "incoming/x.jsonl",
            codecs.BOM_UTF16_BE + '{"ticket_id": "A-1"}\n'.encode("utf-16-be"),
            "incoming/x.jsonl: UTF-16 (big-endian) text with a byte-order mark, not UTF-8: save it as UTF-8",
        ),
        (
            "incoming/x.csv",
            (HEADER + "A-1,Crash on save,bug\n").encode("utf-32"),
            "incoming/x.csv: UTF-32 (little-endian) text with a byte-order mark, not UTF-8: save it as UTF-8",
        ),
        (
            "incoming/x.csv",
            (HEADER + "A-1,Crash on save,bug\n").encode("utf-16-le"),
            "incoming/x.csv: UTF-16 text without a byte-order mark, not UTF-8: save it as UTF-8",
        ),
        (
            "incoming/x.csv",
            b'"ticket_id";"text";"label"\n"A-1";"Crash, again";"bug"\n',
            "incoming/x.csv: the header is separated by semicolons (;), not commas: save the file as "
            "comma-separated CSV",
        ),
        (
            "incoming/x.csv",
            b"ticket_id\ttext\tlabel\nA-1\tCrash on save\tbug\n",
            "incoming/x.csv: the header is separated by tabs, not commas: save the file as "
            "comma-separated CSV",
        ),
        (
            "incoming/x.csv",
            (HEADER + 'A-1,=HYPERLINK("http://x.example","Click"),bug\n').encode(),
            "incoming/x.csv: cannot parse CSV: row 1 (line 2): a spreadsheet formula holding quotes and "
            "commas is not enclosed in quotes: enclose the field in quotes and double the quotes inside it "
            '("")',
        ),
        (
            "incoming/x.csv",
            (HEADER + 'A-1,"Crash "badly" on save",bug\n').encode(),
            "incoming/x.csv: cannot parse CSV: row 1 (line 2): a quote inside a quoted field is not doubled "
            '(""), or text follows the closing quote',
        ),
    ],
    ids=["utf16-bom", "utf16-be-bom", "utf32-bom", "utf16-no-bom", "semicolons", "tabs", "formula", "quote"],
)
def test_text_in_another_encoding_or_layout_is_named_for_what_it_is(key, body, expected):
    assert _parse_error(body, key) == expected


def test_header_names_match_ignoring_case_spaces_and_hyphens_and_a_name_given_twice_is_refused():
    frame = parse_batch(b"Ticket ID,TEXT,Label,Created-At\nA-1,Crash on save,bug,2026-01-01\n", "in/x.csv")
    assert list(frame.columns) == ["ticket_id", "text", "label", "created_at", "_row"]
    aliased = parse_batch(b"TICKET_ID,Body,Category\nA-1,Crash on save,bug\n", "in/x.csv", {"body": "text"})
    assert list(aliased.columns) == ["ticket_id", "text", "Category", "_row"]
    for header in (b"ticket_id,Text,TEXT,label", b"ticket_id,text,TEXT,label", b"ticket_id,BODY,text,label"):
        error = _parse_error(header + b"\nA-1,a,b,bug\n", "in/x.csv", column_aliases={"body": "text"})
        assert error == "in/x.csv: column(s) text given twice (directly or through an alias)", header
