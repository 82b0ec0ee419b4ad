"""Where ticket ids are: an index from each object that holds ticket rows to the ids it holds, so an
erasure reads only the objects that can hold the ids it erases (docs/design.md, "Erasure in proportion").

The index is parquet parts under ``<state_prefix>id-index/``, rows of (``key``, ``etag``, ``ticket_id``),
each part written once by whoever wrote the objects it describes. An entry is a fact about content:

- with an ``etag``: the object `key` *at that ETag* holds exactly these ids. Used for ``incoming/``
  batches, whose producers may overwrite a key with other tickets.
- with ``etag`` empty (`ANY_CONTENT`): whatever its ETag, the object at `key` holds at most these ids.
  Used for objects written once and afterwards only rewritten by an erasure, which only removes ids:
  curated parts (immutable) and quarantine files. Such an entry is written *before* its object, so no
  object can exist that holds an id its entry lacks (a crash in between leaves an entry without object).

An object with no entry for its content is read in full, as before the index: the index only ever
spares reads, it never alone decides that an object is clean. Ids are not text: the index holds no ticket
text, like the erased-id list beside it.
"""

import io
import uuid
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from retrainer.core.batch_files import LoadedBatch
from retrainer.core.batch_files.ticket_ids import ticket_id_of
from retrainer.storage import ObjectStore

INDEX_FOLDER = "id-index/"
ANY_CONTENT = ""
"""The ``etag`` of an entry that holds for every content of its key (see the module docstring)."""
COMPACT_FROM_PARTS = 64
"""`retrainer forget` merges the index into one part from this many parts (runs add one or two a night)."""
_SCHEMA = pa.schema([("key", pa.string()), ("etag", pa.string()), ("ticket_id", pa.string())])


def index_prefix(store: ObjectStore) -> str:
    """Where the index's parts are."""
    return store.settings.state_prefix + INDEX_FOLDER


def record_holdings(store: ObjectStore, holdings: Mapping[tuple[str, str], Iterable]) -> str | None:
    """Store one index part: for each (key, etag) the ticket ids its object holds (ids read as ingestion
    reads them; empty and unreadable ones skipped). None when there is nothing to record. A new key each
    call (If-None-Match): parts are never rewritten, so concurrent writers never race."""
    if not holdings:
        return None
    rows = []
    for (key, etag), held in holdings.items():
        # An object holding no id still gets a row (ticket_id null): "indexed, holds none" spares its read.
        found = sorted({ticket_id for ticket_id in map(ticket_id_of, held) if ticket_id}) or [None]
        rows += [(key, etag, ticket_id) for ticket_id in found]
    keys, etags, ids = (list(column) for column in zip(*rows, strict=True))
    return _write_part(store, pa.table({"key": keys, "etag": etags, "ticket_id": ids}, schema=_SCHEMA))


def _write_part(store: ObjectStore, table: pa.Table) -> str:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    part = f"{index_prefix(store)}{uuid.uuid4().hex}.parquet"  # order does not matter: a set of facts
    store.put(part, buffer.getvalue(), if_none_match=True, content_type="application/vnd.apache.parquet")
    return part


def index_batches(store: ObjectStore, batches: list[LoadedBatch]) -> str | None:
    """Describe the parsed `batches` at their ETags (every record, erased ones included: the object still
    holds them); one not parsed is left undescribed, so an erasure searches its bytes."""
    parsed = [batch for batch in batches if batch.ticket_ids is not None]
    return record_holdings(store, {(batch.key, batch.etag): batch.ticket_ids for batch in parsed})


class Whereabouts(BaseModel):
    """For one erasure: which objects the index describes, and which of them may hold one of its ids.
    Small: one entry per indexed object (thousands at a million tickets), not one per ticket."""

    indexed: set[tuple[str, str]] = set()
    holding: set[tuple[str, str]] = set()
    index_parts: int = 0

    def may_hold(self, key: str, etag: str = ANY_CONTENT) -> bool:
        """Whether the object `key` (at `etag`, when known) has to be read: the index names it as holding
        one of the ids, or does not describe it."""
        if (key, ANY_CONTENT) in self.indexed:
            return (key, ANY_CONTENT) in self.holding
        if etag != ANY_CONTENT and (key, etag) in self.indexed:
            return (key, etag) in self.holding
        return True

    @property
    def objects_indexed(self) -> int:
        """How many objects (at a content) the index describes."""
        return len(self.indexed)


def whereabouts(store: ObjectStore, ticket_ids: Iterable[str], use_index: bool = True) -> Whereabouts:
    """Read the index once and locate `ticket_ids`. With `use_index` False, nothing is described: every
    object is read (the erasure as before the index; tests compare the two)."""
    if not use_index:
        return Whereabouts()
    ids = pa.array(sorted(set(ticket_ids)), type=pa.string())
    found = Whereabouts()
    for _, table in _index_parts(store):
        found.indexed |= _pairs(table)
        found.holding |= _pairs(table.filter(pc.is_in(table["ticket_id"], value_set=ids)))
        found.index_parts += 1
    return found


def compact_index(store: ObjectStore, min_parts: int = COMPACT_FROM_PARTS) -> int:
    """When the index has at least `min_parts` parts, write their rows as one part, then delete the parts
    read (not one written meanwhile); the parts merged (0: none). Each entry is in some part at every
    moment; an erasure that listed a part deleted before it read it finds the objects it described
    undescribed, and reads them."""
    if len(store.list_objects(index_prefix(store))) < min_parts:
        return 0
    parts = list(_index_parts(store))
    _write_part(store, pa.concat_tables([table for _, table in parts]))
    store.delete_many([key for key, _ in parts])
    return len(parts)


def _index_parts(store: ObjectStore):
    """Each index part there is, as (key, table); one deleted since the listing (compacted) is skipped."""
    for info in store.list_objects(index_prefix(store)):
        found = store.get_if_exists(info.key)
        if found is not None:
            yield info.key, pq.read_table(io.BytesIO(found[0]), schema=_SCHEMA)


def _pairs(table: pa.Table) -> set[tuple[str, str]]:
    grouped = table.group_by(["key", "etag"]).aggregate([])
    return set(zip(grouped["key"].to_pylist(), grouped["etag"].to_pylist(), strict=True))
