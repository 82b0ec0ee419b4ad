"""Ticket ids as batch and quarantine files hold them: which columns hold one, how a value reads as an
id, and how an id is found as a whole token in text. Erasure's searches and rewrites use them."""

import re

from retrainer.core.batch_files import TICKET_ID
from retrainer.core.row_rules import FORMULA_PATTERN
from retrainer.core.validation import as_identifier

__all__ = ["TICKET_ID", "ticket_id_names", "ticket_id_of", "ticket_id_pattern"]


def ticket_id_names(column_aliases: dict[str, str]) -> set[str]:
    """The column names that hold a ticket id: ``ticket_id`` and its aliases."""
    return {TICKET_ID} | {column for column, target in column_aliases.items() if target == TICKET_ID}


def ticket_id_of(value) -> str | None:
    """A ticket id as ingestion reads it: integers as text, strings stripped; a quarantine CSV's
    spreadsheet-safety quote (``'=...``) is not part of it."""
    value = as_identifier(value)
    if not isinstance(value, str):
        return None  # not an id validation would accept (a bool, a float, a null)
    quoted = value.startswith("'") and re.match(FORMULA_PATTERN, value[1:])
    return value[1:] if quoted else value


def ticket_id_pattern(ticket_id: str) -> re.Pattern[str]:
    """A pattern finding `ticket_id` as a whole token: ``T-1`` does not match in ``T-10`` or ``AT-1``."""
    return re.compile(rf"(?<![\w-]){re.escape(ticket_id)}(?![\w-])")
