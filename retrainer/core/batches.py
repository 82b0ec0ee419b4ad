"""A batch file as ingestion hands it to validation: its parsed rows, or why it could not be read."""

from dataclasses import dataclass

import pandas as pd

PARSE_ERROR = "_parse_error"
"""Column of a parsed frame: why a record could not be parsed (a broken JSON line); missing elsewhere."""
ROW_NUMBER = "_row"
"""Column of a parsed frame: each record's 1-based number in the file, which error messages cite."""


@dataclass(frozen=True)
class LoadedBatch:
    """A batch object read from S3: parsed rows, or the reason it could not be parsed."""

    key: str
    etag: str
    raw: bytes
    frame: pd.DataFrame | None
    error: str | None
