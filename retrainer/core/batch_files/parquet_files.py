"""Parquet batch files: read with pyarrow, every value a Python object; rewritten without some tickets
in the same schema and compression codec."""

import io

import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from retrainer.core.batch_files import BatchFormatError, numbered, refuse_duplicate_columns
from retrainer.core.batch_files.ticket_ids import ticket_id_of


def read_parquet(raw: bytes, key: str) -> pd.DataFrame:
    """The rows of a Parquet file (``_row`` = the row's number), or a `BatchFormatError` naming why
    it cannot be read."""
    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pyarrow.ArrowException, OSError) as error:
        raise BatchFormatError(f"{key}: cannot read Parquet: {error}") from error
    refuse_duplicate_columns(table.column_names, key)
    return numbered(table.to_pandas().astype(object))


def parquet_without(data: bytes, key: str, ids: set[str], id_names: set[str]) -> tuple[bytes, set[str]]:
    """Drop the rows of `ids`, writing the same schema with the file's compression codec."""
    try:
        source = pq.ParquetFile(io.BytesIO(data))
        table = source.read()
    except (pyarrow.ArrowException, OSError) as error:
        raise BatchFormatError(f"{key}: cannot read Parquet: {error}") from error
    keep = [True] * table.num_rows
    found: set[str] = set()
    for name in id_names & set(table.column_names):
        for index, value in enumerate(table.column(name).to_pylist()):
            if ticket_id_of(value) in ids:
                keep[index] = False
                found.add(ticket_id_of(value))
    buffer = io.BytesIO()
    pq.write_table(table.filter(pyarrow.array(keep)), buffer, compression=_parquet_codec(source))
    return buffer.getvalue(), found


def _parquet_codec(source: pq.ParquetFile) -> str:
    """The codec `source`'s first column chunk is compressed with, as `pq.write_table` names it."""
    metadata = source.metadata
    if metadata.num_row_groups == 0 or metadata.num_columns == 0:
        return "snappy"  # pyarrow's default
    codec = metadata.row_group(0).column(0).compression.lower()
    return {"uncompressed": "none", "lz4_raw": "lz4"}.get(codec, codec)
