"""JSON Lines batch files (one JSON object a line): read line by line, a broken line marked rather than
the file rejected; rewritten without some tickets; searched for ticket ids."""

import json

import pandas as pd

from retrainer.core.batch_files import PARSE_ERROR, ROW_NUMBER, BatchFormatError, decode_text, encode_like
from retrainer.core.batch_files.ticket_ids import ticket_id_of


def read_jsonl(raw: bytes, key: str) -> pd.DataFrame:
    """One row per non-blank line (``_row`` = its line number); a line that is not a JSON object keeps
    its row with why in ``_parse_error``. A `BatchFormatError` when no line is one."""
    records = []
    for number, line in enumerate(decode_text(raw, key).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record = {PARSE_ERROR: f"invalid JSON ({error.msg} at column {error.colno})"}
        if not isinstance(record, dict):
            record = {PARSE_ERROR: f"a JSON {type(record).__name__}, not an object"}
        records.append({**record, ROW_NUMBER: number})
    if not records:
        raise BatchFormatError(f"{key}: empty file (no JSON lines)")
    if all(PARSE_ERROR in record for record in records):
        first = records[0]
        raise BatchFormatError(
            f"{key}: no line is a JSON object (row {first[ROW_NUMBER]}: {first[PARSE_ERROR]})"
        )
    return pd.DataFrame.from_records(records)


def jsonl_without(data: bytes, key: str, ids: set[str], id_names: set[str]) -> tuple[bytes, set[str]]:
    """Drop the lines whose object has one of `ids`; broken lines and every other line stay as they are."""
    text = decode_text(data, key)
    kept, found = [], set()
    for line in text.splitlines(keepends=True):  # the lines ingestion reads
        record = json_object(line)
        hit = {ticket_id_of(record.get(name)) for name in id_names} & ids if record is not None else set()
        if hit:
            found |= hit
        else:
            kept.append(line)
    return encode_like(kept, data), found


def ids_in_json_lines(text: str, ids: set[str], names: set[str]) -> set[str]:
    """The ids in a ticket id key of the lines that parse as JSON objects."""
    found = set()
    for line in text.splitlines():
        record = json_object(line)
        if record is not None:
            fields = {str(name).strip().lower(): value for name, value in record.items()}
            found |= {ticket_id_of(fields.get(name)) for name in names} & ids
    return found


def json_object(line: str) -> dict | None:
    """The JSON object on `line`, or None (blank, broken, or not an object)."""
    try:
        record = json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
