"""CSV batch files: read strictly, rewritten without some tickets line for line, searched leniently.

CSV is read strictly, with checks that depend on no process-global state (batches are parsed on a
thread pool): a record with more or fewer fields than the header, or a quote the parser would have
to guess at (``"a "b" c"``, a quoted field never closed), rejects the file, naming row and line.
"""

import csv
import io
import itertools
import re

import pandas as pd
import pyarrow

from retrainer.core.batch_files import (
    BatchFormatError,
    decode_text,
    encode_like,
    numbered,
    refuse_duplicate_columns,
)
from retrainer.core.batch_files.ticket_ids import ticket_id_of

CSV_BATCH_RECORDS = 256  # records read at a time: fewer than the GC's first threshold (700)
CSV_ARROW_FIELDS = 2**18  # fields held as Python strings before they move to Arrow
# Separators a spreadsheet may export with instead of commas (a semicolon where "," is the decimal mark).
OTHER_DELIMITERS = {";": "semicolons (;)", "\t": "tabs", "|": "vertical bars (|)"}
# csv's default field limit (128 KiB) would reject long texts as unparseable; the text length policy
# (validation) and max_decompressed_bytes bound them instead.
CSV_FIELD_LIMIT = 2**31 - 1


def read_csv(raw: bytes, key: str) -> pd.DataFrame:
    """The records of a CSV file, every value a string (``_row`` = the record's number), or a
    `BatchFormatError` naming the first problem (its row and line)."""
    text = decode_text(raw, key)
    if not text.strip():
        raise BatchFormatError(f"{key}: empty file (no header, no rows)")
    if "\x00" in text:
        if _looks_like_utf16(raw):
            raise BatchFormatError(
                f"{key}: UTF-16 text without a byte-order mark, not UTF-8: save it as UTF-8"
            )
        line = text[: text.index("\x00")].count("\n") + 1
        raise BatchFormatError(f"{key}: NUL byte at line {line} (binary or corrupt file)")
    delimiter = _other_delimiter(text)
    if delimiter:
        raise BatchFormatError(
            f"{key}: the header is separated by {OTHER_DELIMITERS[delimiter]}, not commas: "
            "save the file as comma-separated CSV"
        )
    reader = csv_reader(text)
    try:
        header = _csv_header(reader, key)
        refuse_duplicate_columns(header, key)
        chunks: list[list[pyarrow.Array]] = [[] for _ in header]
        fields: list[str] = []  # record after record, flattened
        # Few records (each a list, tracked by the cyclic GC) live at a time: kept alive by the
        # million, they made the GC rescan the whole heap again and again (2-3x slower).
        while batch := list(itertools.islice(reader, CSV_BATCH_RECORDS)):
            fields.extend(itertools.chain.from_iterable(_same_width(batch, len(header))))
            if len(fields) >= CSV_ARROW_FIELDS:
                _to_arrow(fields, chunks)
        _to_arrow(fields, chunks)
    except (csv.Error, _RaggedRecordError):
        raise BatchFormatError(f"{key}: cannot parse CSV: {_first_csv_problem(text)}") from None
    columns = [name or f"Unnamed: {index}" for index, name in enumerate(header)]  # as pandas names them
    arrays = [pyarrow.chunked_array(chunk, pyarrow.string()) for chunk in chunks]
    return numbered(pyarrow.Table.from_arrays(arrays, names=columns).to_pandas())


def csv_without(data: bytes, key: str, ids: set[str], id_names: set[str]) -> tuple[bytes, set[str]]:
    """Drop the records of `ids`, keeping every other line byte for byte (quoted line ends included)."""
    text = decode_text(data, key)
    lines = io.StringIO(text, newline="").readlines()  # the lines the csv reader consumes, in order
    reader = csv_reader(text)
    kept, found, header, start = [], set(), None, 0
    try:
        for record in reader:
            span, start = lines[start : reader.line_num], reader.line_num
            if header is None and not is_blank_record(record):
                header = record
                positions = [index for index, name in enumerate(header) if name in id_names]
            elif header is not None and not is_blank_record(record):
                if len(record) != len(header):  # ingestion rejects such a file whole: so does erasure
                    raise BatchFormatError(
                        f"{key}: record at line {reader.line_num} has {len(record)} fields"
                    )
                hit = {ticket_id_of(record[index]) for index in positions} & ids
                if hit:
                    found |= hit
                    continue
            kept.extend(span)
    except csv.Error as error:
        raise BatchFormatError(f"{key}: cannot parse CSV ({error})") from None
    kept.extend(lines[start:])
    return encode_like(kept, data), found


def ids_in_lenient_csv(text: str, ids: set[str], names: set[str]) -> set[str]:
    """The ids in the ticket id column(s) of CSV records read without strictness (ragged records, stray
    quotes), up to the first record the csv module cannot read at all."""
    found, positions = set(), None
    try:
        for record in csv_reader(text, strict=False):
            if is_blank_record(record):
                continue
            if positions is None:
                positions = [index for index, name in enumerate(record) if name.strip().lower() in names]
                continue
            found |= {ticket_id_of(record[index]) for index in positions if index < len(record)} & ids
    except csv.Error:
        pass  # what was read so far stands
    return found


def csv_reader(text: str, strict: bool = True):
    """A `csv.reader` over `text` that allows fields as long as a batch may be."""
    # Process-wide, so set when parsing, never at import; every caller sets the same value (thread-safe).
    csv.field_size_limit(CSV_FIELD_LIMIT)
    # newline="": lines end at \n, \r or \r\n only, and line ends inside quoted fields are kept as is.
    return csv.reader(io.StringIO(text, newline=""), strict=strict)


def is_blank_record(record: list[str]) -> bool:
    """An empty or whitespace-only line (pandas skips these too), not a record."""
    return not record or (len(record) == 1 and not record[0].strip())


def _to_arrow(fields: list[str], chunks: list[list[pyarrow.Array]]) -> None:
    """Move the flattened records in `fields` into one Arrow string array per column (the dtype
    pandas' read_csv(dtype=str) gives), keeping Python strings for a bounded number of records."""
    width = len(chunks)
    for index, chunk in enumerate(chunks):
        chunk.append(pyarrow.array(fields[index::width], pyarrow.string()))
    fields.clear()


def _looks_like_utf16(raw: bytes) -> bool:
    """ASCII text in UTF-16 without a byte-order mark: every other byte of its start is NUL."""
    sample = raw[:1024]
    return len(sample) >= 8 and max(sample[0::2].count(0), sample[1::2].count(0)) >= 0.9 * (len(sample) // 2)


def _other_delimiter(text: str) -> str | None:
    """The separator of a header line that has no comma (outside quotes) but semicolons, tabs or bars."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    unquoted = re.sub(r'"[^"]*"', "", header)
    if "," in unquoted:
        return None
    counts = {delimiter: unquoted.count(delimiter) for delimiter in OTHER_DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


class _RaggedRecordError(Exception):
    """A record with another number of fields than the header (located by `_first_csv_problem`)."""


def _csv_header(reader, key: str) -> list[str]:
    for record in reader:
        if not is_blank_record(record):
            return record
    raise BatchFormatError(f"{key}: empty file (no header, no rows)")


def _same_width(records: list[list[str]], width: int) -> list[list[str]]:
    """`records` less blank lines, each `width` fields long, else `_RaggedRecordError`."""
    if width == 1 or set(map(len, records)) != {width}:  # blank lines, or a ragged record
        records = [record for record in records if not is_blank_record(record)]
        if any(len(record) != width for record in records):
            raise _RaggedRecordError
    return records


def _first_csv_problem(text: str) -> str:
    """Re-read record by record (slow, only for a bad file) to name the first bad record and line."""
    reader = csv_reader(text)
    width, row, end_line = None, 0, 0
    try:
        for record in reader:
            start_line, end_line = end_line + 1, reader.line_num
            if is_blank_record(record):
                continue
            if width is None:
                width = len(record)
                continue
            row += 1
            if len(record) != width:
                return f"row {row} (line {start_line}) has {len(record)} fields, the header has {width}"
    except csv.Error as error:
        where = "the header" if width is None else f"row {row + 1}"
        line = next(itertools.islice(io.StringIO(text, newline=""), reader.line_num - 1, None), "")
        return f"{where} (line {end_line + 1}): {_csv_error_reason(error, line)}"
    return "unknown problem"  # unreachable: read_csv found one


def _csv_error_reason(error: csv.Error, line: str) -> str:
    """What a strict `csv.reader` error means, told from the physical `line` where it stopped (the
    reason only: no field's value, which may be a ticket's text)."""
    message = str(error)
    if message == "unexpected end of data":
        return "a quoted field is not closed before the end of the file"
    if message.endswith("expected after '\"'"):
        # A field that is not quoted but holds quotes and commas (a formula, =HYPERLINK("a","b")) reads
        # as several fields, and one starts with a quote: the fix is quoting that field, not doubling.
        unquoted = next((f for f in line.split(",") if '"' in f and not f.lstrip().startswith('"')), None)
        if unquoted is not None:
            what = "a spreadsheet formula" if unquoted.lstrip()[0] in "=+-@" else "a field"
            return (
                f"{what} holding quotes and commas is not enclosed in quotes: enclose the field in quotes "
                'and double the quotes inside it ("")'
            )
        return 'a quote inside a quoted field is not doubled (""), or text follows the closing quote'
    return message
