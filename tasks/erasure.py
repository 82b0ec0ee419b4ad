"""Erasure on request: take tickets, by id, out of everything the project keeps of them.

The `forget` flow (``flows/forget.py``) calls the steps below in order: the curated data and the
``incoming/`` batch files (one manifest commit, compare-and-swap), the quarantine, the report of which
published models were trained or evaluated on the tickets (read before the next step deletes their
datasets), the superseded curated versions that hold them, and last the request itself, appended to
``state/erasure/`` (If-None-Match: never overwritten). Ingestion withholds the records of erased tickets
that a producer sends again (`withhold_erased`).

How each batch file format is rewritten without some tickets, or searched when it is unreadable, is
`retrainer.core.batch_files.formats`; this module reads and writes the store and the manifest.

Ticket ids are identifiers, not customer text: they are logged and recorded. No ticket text is.
Published model weights are not changed: the record names the versions trained on the tickets, and the
next nightly run trains on data without them (the dataset version changed).
"""

import dataclasses
import io
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from retrainer.core.batch_files import BatchFormatError, LoadedBatch
from retrainer.core.batch_files.formats import ids_in_unreadable, parsed_batch, without_tickets
from retrainer.core.batch_files.ticket_ids import TICKET_ID, ticket_id_of, ticket_id_pattern
from retrainer.core.validation import ERRORS_SUFFIX, MERGED_SUFFIX, REJECTED_SUFFIX, normalise_ticket_ids
from retrainer.id_index import Whereabouts, record_holdings
from retrainer.settings import IngestSettings
from retrainer.storage import ObjectStore, PreconditionFailedError, StorageError
from tasks.common import once_task, read_task, run_logger
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    DatasetPart,
    dataset_versions,
    latest_rows,
    parts_prefix,
    read_part,
    version_parts,
    write_part,
    write_version,
)
from tasks.manifest import Manifest, commit_manifest, read_manifest
from tasks.registry import list_versions, utc_stamp

ERASURE_FOLDER = "erasure/"
ERASED_IDS_NAME = "erased-ids.json"
JSON = "application/json"
MANIFEST_ATTEMPTS = 5  # a nightly run that commits meanwhile makes the compare-and-swap lose: redo
# What the record states whatever was found: what erasure does not do, and why a lineage may dangle.
STATEMENTS = [
    "published model weights are not retrained or deleted: `models` names the versions trained or "
    "evaluated on these tickets; the next nightly run trains on the new dataset version without them",
    "superseded curated dataset versions holding the tickets were deleted, and the parts holding them that "
    "the current version no longer lists (they are not published artefacts): a published model's lineage "
    "may name a deleted dataset version",
    "with bucket versioning on, earlier object versions stay until a noncurrent-version expiry rule "
    "removes them",
]


class ErasureRequestError(ValueError):
    """An erasure request that cannot be carried out as asked (the message says why)."""


class ModelExposure(BaseModel):
    """Which requested tickets one published model version was trained and evaluated on."""

    version: str
    dataset_version: str | None
    dataset: Literal["read", "unknown"] = Field(
        description="unknown: its dataset version is gone (or never named), so exposure cannot be told"
    )
    trained_on: list[str] = Field(default_factory=list, description="ids in its train or validation split")
    evaluated_on: list[str] = Field(default_factory=list, description="ids in its eval split")


class DatasetsErasure(BaseModel):
    """What erasing from the superseded curated data deleted: versions, and parts no longer listed."""

    versions: list[str] = Field(default_factory=list)
    parts: list[str] = Field(default_factory=list)


class CuratedErasure(BaseModel):
    """What erasing from the curated data and the incoming batch files changed (one manifest commit);
    `found`: the requested ids they held; `review`: unreadable objects that mention an id outside a
    ticket id field (kept: someone must look at them)."""

    dataset_version_before: str | None = None
    dataset_version_after: str | None = None
    rows_removed: int = 0
    incoming_rewritten: list[str] = Field(default_factory=list)
    incoming_deleted: list[str] = Field(default_factory=list)
    unchecked: list[str] = Field(default_factory=list)
    review: list[str] = Field(default_factory=list)
    found: list[str] = Field(default_factory=list)
    parts_read: int = Field(0, description="curated parts read (the id index spared the others)")
    incoming_read: int = Field(0, description="incoming/ objects read (the id index spared the others)")
    existing: DatasetsErasure = Field(
        default_factory=DatasetsErasure,
        exclude=True,
        description="the dataset versions and parts listed before the manifest commit (not recorded)",
    )


class QuarantineErasure(BaseModel):
    """What erasing from the quarantine changed; `found`: the requested ids it held."""

    rewritten: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    unchecked: list[str] = Field(default_factory=list)
    review: list[str] = Field(default_factory=list)
    found: list[str] = Field(default_factory=list)
    read: int = Field(0, description="quarantine objects read (the id index spared the others)")


class ErasureRecord(BaseModel):
    """One erasure request and everything it changed: appended to ``state/erasure/`` and never rewritten."""

    request_id: str
    ticket_ids: list[str]
    requested_at: datetime
    requested_by: str
    note: str = ""
    curated: CuratedErasure = Field(description="the curated data and incoming/ (one manifest commit)")
    quarantine: QuarantineErasure
    datasets_deleted: list[str] = Field(default_factory=list, description="superseded dataset versions")
    dataset_parts_deleted: list[str] = Field(
        default_factory=list, description="parts holding the tickets that no version kept lists"
    )
    models: list[ModelExposure] = Field(default_factory=list)
    predictions_rewritten: list[str] = Field(
        default_factory=list, description="stored model predictions rewritten without the tickets' rows"
    )
    not_found: list[str] = Field(default_factory=list, description="requested ids found nowhere")
    statements: list[str] = Field(default_factory=lambda: list(STATEMENTS))
    log_key: str | None = None

    @property
    def unchecked(self) -> list[str]:
        """Objects that could not be searched, and why: someone must look at them."""
        return self.curated.unchecked + self.quarantine.unchecked

    @property
    def review(self) -> list[str]:
        """Unreadable objects kept although they mention a requested id (not as a ticket id)."""
        return self.curated.review + self.quarantine.review

    @property
    def trained_on_versions(self) -> list[str]:
        """Published versions trained on at least one of the tickets."""
        return [model.version for model in self.models if model.trained_on]

    def summary(self) -> list[str]:
        """A few lines for the console and the run log: versions, counts, keys (no ticket text)."""
        evaluated = [model.version for model in self.models if model.evaluated_on]
        unknown = [model.version for model in self.models if model.dataset == "unknown"]
        curated, quarantine = self.curated, self.quarantine
        lines = [
            f"erasure {self.request_id}: {len(self.ticket_ids)} ticket id(s), by {self.requested_by}",
            f"curated data: {curated.dataset_version_before} -> {curated.dataset_version_after} "
            f"({curated.rows_removed} row(s) removed)",
            f"incoming: {len(curated.incoming_rewritten)} rewritten, "
            f"{len(curated.incoming_deleted)} deleted; "
            f"quarantine: {len(quarantine.rewritten)} rewritten, {len(quarantine.deleted)} deleted; "
            f"superseded dataset versions deleted: {len(self.datasets_deleted)} "
            f"(and {len(self.dataset_parts_deleted)} part(s)); "
            f"stored model predictions: {len(self.predictions_rewritten)} part(s) rewritten",
            f"objects read: {curated.parts_read} curated part(s), {curated.incoming_read} incoming, "
            f"{quarantine.read} quarantine (the id index spared the rest)",
            f"published models trained on them: {', '.join(self.trained_on_versions) or 'none'}; "
            f"evaluated on them: {', '.join(evaluated) or 'none'}"
            + (f"; unknown (dataset gone): {', '.join(unknown)}" if unknown else ""),
        ]
        if self.not_found:
            lines.append(f"not found anywhere: {', '.join(self.not_found)}")
        if self.unchecked:
            lines.append(f"could not be searched (look at them): {'; '.join(self.unchecked)}")
        if self.review:
            lines.append(f"kept, to review (an id mentioned, not as a ticket id): {'; '.join(self.review)}")
        if self.log_key:
            lines.append(f"recorded in {self.log_key}")
        return lines


# --- pure: frames, bytes and problem lists, no S3 -------------------------------------------------


def requested_ids(ticket_ids: Iterable[str]) -> list[str]:
    """The requested ids, stripped, without blanks and repeats, in the order given."""
    ids = list(dict.fromkeys(str(ticket_id).strip() for ticket_id in ticket_ids))
    ids = [ticket_id for ticket_id in ids if ticket_id]
    if not ids:
        raise ErasureRequestError("no ticket id to forget: name at least one (blank ids are not ids)")
    return ids


def drop_tickets(frame: pd.DataFrame, ids: set[str]) -> tuple[pd.DataFrame, set[str]]:
    """`frame` without the rows whose ``ticket_id`` is one of `ids`, and the ids it held."""
    hit = frame[TICKET_ID].isin(ids)
    return frame[~hit].reset_index(drop=True), set(frame.loc[hit, TICKET_ID])


def withhold_erased(
    batches: list[LoadedBatch], erased: set[str], ingest: IngestSettings
) -> list[LoadedBatch]:
    """The batches without the records of `erased` tickets (a producer sent them again), each counting
    in ``erased`` the records it lost: those are neither curated nor quarantined (the quarantine would
    store their text again). Ids match as validation reads them (stripped, integers as text); every other row
    keeps its row number (``_row``). `raw` loses the same records, since a batch rejected whole is
    quarantined as its bytes. A batch not parsed (unreadable: quarantined whole, as erasure treats
    it) or without a ``ticket_id`` column is returned as it is.
    """
    return [_withheld(batch, erased, ingest) for batch in batches]


def _withheld(batch: LoadedBatch, erased: set[str], ingest: IngestSettings) -> LoadedBatch:
    if not erased or batch.frame is None or TICKET_ID not in batch.frame.columns:
        return batch
    hit = normalise_ticket_ids(batch.frame[TICKET_ID]).isin(erased).to_numpy(dtype=bool)
    if not hit.any():
        return batch
    # It parsed, so it reads here too (same parser, aliases and limit).
    raw, _ = without_tickets(
        batch.raw, batch.key, erased, ingest.column_aliases, ingest.max_decompressed_bytes
    )
    frame = batch.frame[~hit].reset_index(drop=True)
    return dataclasses.replace(batch, frame=frame, raw=raw, erased=int(hit.sum()))


def ids_by_split(curated: pd.DataFrame, ids: set[str]) -> dict[str, list[str]]:
    """Per split (train, validation, eval), which of `ids` a curated frame holds, sorted."""
    held = curated[curated[TICKET_ID].isin(ids)]
    return {split: sorted(held.loc[held["split"] == split, TICKET_ID]) for split in (TRAIN, VALIDATION, EVAL)}


def problems_without_tickets(report: dict, rows: set[int], ids: set[str]) -> tuple[dict, int]:
    """A quarantine ``.errors.json`` report without the problems of `rows` (the rows of `ids` in the file)
    or naming one of `ids`; and how many problems were dropped."""
    source = report.get("source_key", "")
    row_prefixes = tuple(f"{source}: row {row}: " for row in rows)
    patterns = [ticket_id_pattern(ticket_id) for ticket_id in ids]

    def names_a_ticket(problem: str) -> bool:
        return problem.startswith(row_prefixes) or any(pattern.search(problem) for pattern in patterns)

    problems = report.get("problems", [])
    kept = [problem for problem in problems if not names_a_ticket(problem)]
    return {**report, "problems": kept}, len(problems) - len(kept)


def rows_of_tickets(rejected_csv: bytes, ids: set[str]) -> set[int]:
    """The file rows (``source_row``) of `ids` in a quarantine ``.rejected.csv``."""
    frame = pd.read_csv(io.BytesIO(rejected_csv), dtype=str, keep_default_na=False)
    if TICKET_ID not in frame.columns or "source_row" not in frame.columns:
        return set()
    hit = frame[TICKET_ID].map(lambda value: ticket_id_of(value) in ids)
    return {int(row) for row in frame.loc[hit, "source_row"] if row.strip().isdigit()}


# --- the steps, against the store -------------------------------------------------------------------


def erase_curated_and_incoming(
    store: ObjectStore,
    ticket_ids: list[str],
    ingest: IngestSettings,
    attempts: int = MANIFEST_ATTEMPTS,
    request_id: str | None = None,
    where: Whereabouts | None = None,
) -> CuratedErasure:
    """Write a curated version without the tickets, rewrite (or delete) the ``incoming/`` objects holding
    them, and commit the manifest pointing at both (If-Match), whatever was found: the commit is the
    erasure's fence (`Manifest.erasures`). A nightly run that commits meanwhile makes the commit lose: it
    is redone on what that run wrote, up to `attempts` times.

    The protocol with runs (docs/design.md, "Erasure and runs"): a run commits its manifest with If-Match
    on the manifest it read before reading ``incoming/``. So a run that read it before this fence loses its
    compare-and-swap and discards the version it wrote (`tasks.dataset.discard_version`), and a run that
    read it after reads the rewritten objects and this version, without the tickets. The dataset versions
    and parts listed just before the fence (`CuratedErasure.existing`) are the only ones
    `delete_superseded_datasets` may delete: after the fence, no manifest can come to name one of them
    but the version committed here.

    Two erasures at once: ``incoming/`` rewrites are conditional (If-Match the ETag read; redone on the
    object as it is then), and each commit follows the chain of rewrites (before -> after) it knows,
    its own and those committed by others (`Manifest.erasure_rewrites`), so an entry ends at the ETag
    of the object's last rewrite. An object not ingested yet is rewritten and left to the next run.

    Only the parts and ``incoming/`` objects that `where` (`retrainer.id_index`) says may hold an id are read
    (default: all of them); each rewritten ``incoming/`` object is indexed at its new ETag.
    """
    ids, where = set(ticket_ids), where or Whereabouts()
    incoming = _IncomingErasure()  # kept across attempts: a rewritten object is found clean the second time
    for attempt in range(1, attempts + 1):
        manifest, manifest_etag = read_manifest(store)
        curated, erased_sources = _erase_curated(store, manifest, ids, where)
        incoming.erase(store, ids, ingest, where)
        existing = _listed_datasets(store)  # before the fence: what no later manifest can name
        updated = _updated_manifest(
            manifest, curated.dataset_version_after, incoming.rewrites, erased_sources, request_id
        )
        try:
            commit_manifest(store, updated, manifest_etag)
        except PreconditionFailedError:
            run_logger().warning(
                "erasure: the manifest changed meanwhile (attempt %d of %d)", attempt, attempts
            )
            continue
        record_holdings(store, incoming.kept_ids)  # the rewritten objects' new content, described again
        return curated.model_copy(
            update={
                "incoming_read": incoming.read,
                "incoming_rewritten": sorted(incoming.rewrites),
                "incoming_deleted": sorted(incoming.deleted),
                "unchecked": sorted(incoming.unchecked),
                "review": sorted(incoming.review),
                "found": sorted(set(curated.found) | incoming.found),
                "existing": existing,
            }
        )
    raise StorageError(
        f"erasure: the manifest {store.uri(store.settings.state_prefix)} kept changing during {attempts} "
        "attempts; nothing was recorded: run the request again"
    )


def _erase_curated(
    store: ObjectStore, manifest: Manifest, ids: set[str], where: Whereabouts
) -> tuple[CuratedErasure, dict[tuple[str, str], int]]:
    """The erasure from the manifest's version, and how many curated rows it removed per source (key,
    ETag the rows carry)."""
    before = manifest.dataset_version
    if before is None:
        return CuratedErasure(dataset_version_before=before, dataset_version_after=before), {}
    after, removed, read = _version_without(store, before, ids, where)
    found = set(removed[TICKET_ID])
    erased = CuratedErasure(
        dataset_version_before=before,
        dataset_version_after=after,
        rows_removed=len(found),  # a version holds one row per ticket
        found=sorted(found),
        parts_read=read,
    )
    return erased, _rows_per_source(removed)


def version_without_tickets(store: ObjectStore, dataset_version: str, ids: set[str]) -> tuple[str, set[str]]:
    """A new version of `dataset_version` in which each part holding one of `ids` is rewritten without
    those rows (every other row keeps its place and split; every other part is listed as it was), and the
    ids found; `dataset_version` itself when no part held one."""
    version, removed, _ = _version_without(store, dataset_version, ids, Whereabouts())
    return version, set(removed[TICKET_ID])


def _version_without(
    store: ObjectStore, dataset_version: str, ids: set[str], where: Whereabouts
) -> tuple[str, pd.DataFrame, int]:
    """`version_without_tickets`, with the removed rows that the version showed (the last of each ticket)
    and how many parts were read (those `where` says may hold an id)."""
    parts, removed = [], []
    for part in version_parts(store, dataset_version):
        if not where.may_hold(part.key):
            parts.append(part)
            continue
        rows = read_part(store, part)
        kept, hit = drop_tickets(rows, ids)
        parts.append(write_part(store, kept) if hit else part)
        removed.append(rows[rows[TICKET_ID].isin(ids)])
    shown = latest_rows(removed)
    shown = shown if shown is not None else pd.DataFrame({TICKET_ID: []})
    version = write_version(store, parts, dataset_version) if len(shown) else dataset_version
    return version, shown, len(removed)


def _rows_per_source(rows: pd.DataFrame) -> dict[tuple[str, str], int]:
    if rows.empty or not {"source_key", "source_etag"} <= set(rows.columns):
        return {}
    counts = rows.groupby(["source_key", "source_etag"]).size()
    return {(key, etag): int(count) for (key, etag), count in counts.items()}


def _listed_datasets(store: ObjectStore) -> DatasetsErasure:
    """Every dataset version and part in the bucket now."""
    parts = [info.key for info in store.list_objects(parts_prefix(store))]
    return DatasetsErasure(versions=dataset_versions(store), parts=parts)


class _IncomingErasure:
    """What erasing from ``incoming/`` did so far: each rewritten object's ETag changes (before -> after),
    deleted, unsearchable and to-review objects, ids found."""

    def __init__(self) -> None:
        self.rewrites: dict[str, dict[str, str]] = {}
        self.deleted: set[str] = set()
        self.unchecked: set[str] = set()
        self.review: set[str] = set()
        self.found: set[str] = set()
        self.kept_ids: dict[tuple[str, str], list[str]] = {}  # (key, ETag after) -> the ids left there
        self.read = 0

    def erase(self, store: ObjectStore, ids: set[str], ingest: IngestSettings, where: Whereabouts) -> None:
        """Rewrite or delete every ``incoming/`` object holding one of `ids` (reading those `where` says
        may hold one)."""
        for info in store.list_objects(store.settings.incoming_prefix):
            if info.key.endswith("/") or not where.may_hold(info.key, info.etag):
                continue
            if info.size > ingest.max_object_bytes:
                self.unchecked.add(f"{info.key}: {info.size} bytes, over max_object_bytes: not searched")
                continue
            self._erase_object(store, info.key, ids, ingest)

    def _erase_object(self, store: ObjectStore, key: str, ids: set[str], ingest: IngestSettings) -> None:
        """Rewrite `key` without the tickets, If-Match the ETag read: when another writer (a second
        erasure, a producer) changed it meanwhile, it is read again and redone on what is there now."""
        for _ in range(MANIFEST_ATTEMPTS):
            found = store.get_if_exists(key)
            if found is None:
                return  # deleted meanwhile (by another erasure)
            raw, etag = found
            self.read += 1
            try:
                kept, hit = without_tickets(
                    raw, key, ids, ingest.column_aliases, ingest.max_decompressed_bytes
                )
            except BatchFormatError:  # unreadable: ingestion quarantined it whole
                self._delete_if_held(store, key, raw, ids, ingest)
                return
            if not hit:
                return
            try:
                after = store.put(key, kept, if_match=etag)
            except PreconditionFailedError:
                continue
            self.found |= hit
            self.rewrites.setdefault(key, {})[etag] = after
            left = parsed_batch(key, after, kept, ingest).ticket_ids
            if left is not None:
                self.kept_ids[(key, after)] = left
            return
        self.unchecked.add(f"{key}: changed by another writer during every attempt: not erased, run again")

    def _delete_if_held(
        self, store: ObjectStore, key: str, raw: bytes, ids: set[str], ingest: IngestSettings
    ) -> None:
        hits = ids_in_unreadable(raw, key, ids, ingest.column_aliases, ingest.max_decompressed_bytes)
        if hits is None:
            self.unchecked.add(f"{key}: unreadable and does not decompress within the limit: not searched")
            return
        held, mentioned = hits
        if held:
            store.delete(key)
            self.deleted.add(key)
            self.found |= held
        elif mentioned:
            self.review.add(_review_line(key, mentioned))


def _review_line(key: str, mentioned: set[str]) -> str:
    return f"{key}: unreadable; mentions {', '.join(sorted(mentioned))} but not as a ticket id: kept"


def _updated_manifest(
    manifest: Manifest,
    dataset_version: str | None,
    rewrites: dict[str, dict[str, str]],
    erased_sources: dict[tuple[str, str], int],
    request_id: str | None,
) -> Manifest:
    """The manifest at `dataset_version`, fenced (one more erasure): each entry counts the curated rows
    erased from it, and follows the chain of ``incoming/`` rewrites known (this erasure's and those other
    erasures committed) from its ETag to the last one; rewrites no entry reached are kept for the next
    erasure's commit (an entry of other content is a batch still to ingest: its ETag stays)."""
    objects, pending = {}, {}
    for key, entry in manifest.objects.items():
        chain = {**manifest.erasure_rewrites.get(key, {}), **rewrites.get(key, {})}
        etag, passed = entry.etag, set()
        while etag in chain and etag not in passed:
            passed.add(etag)
            etag = chain[etag]
        erased = erased_sources.get((key, entry.curated_etag), 0)
        update = {"erased_rows": entry.erased_rows + erased} if erased else {}
        if etag != entry.etag:
            update |= {"etag": etag, "source_etag": entry.curated_etag}
        objects[key] = entry.model_copy(update=update)
        left = {before: after for before, after in chain.items() if before not in passed}
        if left:
            pending[key] = left
    return Manifest(
        dataset_version=dataset_version,
        objects=objects,
        erasures=manifest.erasures + 1,
        last_erasure=request_id,
        erasure_rewrites=pending,
    )


def erase_from_quarantine(
    store: ObjectStore, ticket_ids: list[str], ingest: IngestSettings, where: Whereabouts | None = None
) -> QuarantineErasure:
    """Rewrite the quarantine's ``.rejected.csv``/``.merged.csv`` without the tickets' rows and its
    ``.errors.json`` without their problems (If-Match, redone when another erasure rewrote it meanwhile);
    delete a batch quarantined whole when an id stands in it as a ticket id (one only mentioned there is
    listed for review).

    Idempotent: run again, it finds nothing more to change. Reads only the objects `where` says may hold an
    id (default: all).
    """
    ids, where = set(ticket_ids), where or Whereabouts()
    result = QuarantineErasure()
    listed = store.list_objects(store.settings.quarantine_prefix)
    objects = [info for info in listed if where.may_hold(info.key)]
    result.read = len(objects)
    # Problems are matched to rows through the .rejected.csv, so errors.json goes before it is rewritten.
    for info in sorted(objects, key=lambda info: not info.key.endswith(ERRORS_SUFFIX)):
        if info.key.endswith(ERRORS_SUFFIX):
            if store.rewrite(
                info.key,
                lambda raw, key=info.key: _problems_erased(store, key, raw, ids),
                content_type="application/json",
            ):
                result.rewritten.append(info.key)
        elif info.key.endswith((REJECTED_SUFFIX, MERGED_SUFFIX)):
            _erase_rows(store, info.key, ids, ingest, result)
        else:  # a batch quarantined whole, byte for byte: it was unreadable, so it is not rewritten
            _erase_whole(store, info.key, ids, ingest, result)
    result.rewritten.sort()
    result.found = sorted(set(result.found))
    return result


def _erase_whole(
    store: ObjectStore, key: str, ids: set[str], ingest: IngestSettings, result: QuarantineErasure
) -> None:
    found = store.get_if_exists(key)
    if found is None:
        return  # deleted meanwhile by another erasure
    hits = ids_in_unreadable(found[0], key, ids, {}, ingest.max_decompressed_bytes)
    if hits is None:
        result.unchecked.append(f"{key}: does not decompress within the limit: not searched")
    elif hits[0]:
        store.delete(key)
        result.deleted.append(key)
        result.found.extend(hits[0])
    elif hits[1]:
        result.review.append(_review_line(key, hits[1]))


def _erase_rows(
    store: ObjectStore, key: str, ids: set[str], ingest: IngestSettings, result: QuarantineErasure
) -> None:
    held: set[str] = set()

    def without(raw: bytes) -> bytes | None:
        kept, found = without_tickets(raw, key, ids, {}, ingest.max_decompressed_bytes)
        held.update(found)
        return kept if found else None

    try:
        rewritten = store.rewrite(key, without, content_type="text/csv")
    except BatchFormatError as error:  # not written by this project's validation, or damaged
        result.unchecked.append(f"{key}: cannot be read ({error}): not searched")
        return
    if rewritten:
        result.rewritten.append(key)
        result.found.extend(held)


def _problems_erased(store: ObjectStore, key: str, raw: bytes, ids: set[str]) -> bytes | None:
    rejected = store.get_if_exists(key.removesuffix(ERRORS_SUFFIX) + REJECTED_SUFFIX)
    rows = rows_of_tickets(rejected[0], ids) if rejected else set()
    report, dropped = problems_without_tickets(json.loads(raw), rows, ids)
    return json.dumps(report, indent=2).encode() if dropped else None


def published_exposure(
    store: ObjectStore, ticket_ids: list[str], where: Whereabouts | None = None
) -> list[ModelExposure]:
    """For each published model version, which tickets its dataset version had in train or validation
    ("trained on") and in eval ("evaluated on"); "unknown" when that dataset version is gone. Reads the
    parts `where` says may hold an id (default: all)."""
    ids, cache, where = set(ticket_ids), {}, where or Whereabouts()
    exposures = []
    for summary in list_versions(store):
        dataset = summary.dataset_version
        if dataset not in cache:
            cache[dataset] = _splits_of(store, dataset, ids, where)
        splits = cache[dataset]
        if splits is None:
            exposures.append(
                ModelExposure(version=summary.version, dataset_version=dataset, dataset="unknown")
            )
            continue
        exposures.append(
            ModelExposure(
                version=summary.version,
                dataset_version=dataset,
                dataset="read",
                trained_on=sorted(splits[TRAIN] + splits[VALIDATION]),
                evaluated_on=splits[EVAL],
            )
        )
    return exposures


def _splits_of(
    store: ObjectStore, dataset_version: str | None, ids: set[str], where: Whereabouts
) -> dict[str, list[str]] | None:
    """The ids' splits in `dataset_version` (the last row of each ticket, as `read_curated` shows it),
    from the parts that may hold them; None when the version or one of those parts is gone."""
    if dataset_version is None:
        return None
    try:
        listed = version_parts(store, dataset_version)
        parts = [read_part(store, part) for part in listed if where.may_hold(part.key)]
    except KeyError:
        return None
    curated = latest_rows(parts)
    return ids_by_split(curated if curated is not None else pd.DataFrame({TICKET_ID: [], "split": []}), ids)


def delete_superseded_datasets(
    store: ObjectStore,
    ticket_ids: list[str],
    current: str | None,
    existing: DatasetsErasure | None = None,
    where: Whereabouts | None = None,
) -> DatasetsErasure:
    """Delete every curated dataset version but `current` that lists a part holding one of the tickets,
    then every part holding one that `current` does not list (versions first: none is left listing a
    deleted part).

    Only the versions and parts in `existing` are candidates: those listed before the erasure's manifest
    commit (`CuratedErasure.existing`); one written since may belong to a run whose commit is still to
    come (default: all there are now). They are not published artefacts (a model's lineage then names a
    deleted version). Idempotent. Reads the parts `where` says may hold an id (default: all).
    """
    existing = existing or _listed_datasets(store)
    holds = _PartSearch(store, set(ticket_ids), where or Whereabouts())
    live = set() if current is None else {part.key for part in version_parts(store, current)}
    versions = [
        version
        for version in existing.versions
        if version != current and any(map(holds, version_parts(store, version)))
    ]
    prefix = store.settings.datasets_prefix
    store.delete_many(
        [info.key for version in versions for info in store.list_objects(f"{prefix}{version}/")]
    )
    parts = [key for key in existing.parts if key not in live and holds(DatasetPart(key=key, rows=0))]
    store.delete_many(parts)  # after the versions: none is left listing a deleted part
    return DatasetsErasure(versions=versions, parts=parts)


class _PartSearch:
    """Whether a part holds one of the ids: each part read once (versions share them)."""

    def __init__(self, store: ObjectStore, ids: set[str], where: Whereabouts) -> None:
        self.store, self.ids, self.where, self.held = store, ids, where, {}

    def __call__(self, part: DatasetPart) -> bool:
        if not self.where.may_hold(part.key):
            return False
        if part.key not in self.held:
            try:
                self.held[part.key] = bool(read_part(self.store, part)[TICKET_ID].isin(self.ids).any())
            except KeyError:
                self.held[part.key] = False  # gone (or a folder without curated data): holds no ticket
        return self.held[part.key]


def erasure_record(
    request: dict,
    curated: CuratedErasure,
    quarantine: QuarantineErasure,
    models: list[ModelExposure],
    datasets: DatasetsErasure,
    predictions_rewritten: list[str] | None = None,
) -> ErasureRecord:
    """The record of a request (`request`: request_id, ticket_ids, requested_at, requested_by, note) from
    what each step returned; an id found in none of them is "not found"."""
    exposed = {ticket_id for model in models for ticket_id in model.trained_on + model.evaluated_on}
    found = set(curated.found) | set(quarantine.found) | exposed
    return ErasureRecord(
        **request,
        curated=curated,
        quarantine=quarantine,
        datasets_deleted=datasets.versions,
        dataset_parts_deleted=datasets.parts,
        models=models,
        predictions_rewritten=predictions_rewritten or [],
        # A deleted superseded version held them too, but then so did a step above or a model's dataset.
        not_found=[ticket_id for ticket_id in request["ticket_ids"] if ticket_id not in found],
    )


def new_request(ticket_ids: Iterable[str], requested_by: str, note: str, request_id: str | None) -> dict:
    """The request part of an `ErasureRecord`: ids checked, who (required), when (now)."""
    if not requested_by.strip():
        raise ErasureRequestError("an erasure request needs requested_by: who asked (recorded in the log)")
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "ticket_ids": requested_ids(ticket_ids),
        "requested_at": datetime.now(UTC),
        "requested_by": requested_by.strip(),
        "note": note,
    }


def record_erasure(store: ObjectStore, record: ErasureRecord) -> ErasureRecord:
    """Append the request to ``state/erasure/<UTC stamp>-<request id>.json`` (If-None-Match: never
    overwritten); the record returned names that key."""
    key = f"{store.settings.state_prefix}{ERASURE_FOLDER}{utc_stamp()}-{record.request_id}.json"
    recorded = record.model_copy(update={"log_key": key})
    store.put(
        key, recorded.model_dump_json(indent=2).encode(), if_none_match=True, content_type="application/json"
    )
    return recorded


def read_erasures(store: ObjectStore) -> list[ErasureRecord]:
    """Every erasure request recorded, oldest first."""
    keys = [info.key for info in store.list_objects(store.settings.state_prefix + ERASURE_FOLDER)]
    return [ErasureRecord.model_validate_json(store.get(key)[0]) for key in keys]


def erased_ids_key(store: ObjectStore) -> str:
    """The consolidated list of every erased ticket id: one object a nightly run reads once."""
    return store.settings.state_prefix + ERASED_IDS_NAME


def erased_ticket_ids(store: ObjectStore) -> set[str]:
    """Every ticket id an erasure request named: ingestion withholds their records (`withhold_erased`).
    Read from the consolidated list; a bucket whose erasures all predate it: from the log's records."""
    found = store.get_if_exists(erased_ids_key(store))
    if found is None:
        return _logged_ids(store)
    return set(json.loads(found[0])["ticket_ids"])


def add_erased_ids(store: ObjectStore, ticket_ids: list[str]) -> str:
    """Add `ticket_ids` to the consolidated list (compare-and-swap; the first time, with every id the
    log's records name), before anything is erased: from then on a nightly run withholds them, also a
    copy sent again while the erasure runs. The list's key."""
    key, ids = erased_ids_key(store), set(ticket_ids)
    for _ in range(MANIFEST_ATTEMPTS):
        if store.get_if_exists(key) is None:
            try:
                store.put(key, _id_list(ids | _logged_ids(store)), if_none_match=True, content_type=JSON)
                return key
            except PreconditionFailedError:
                continue  # another erasure created it meanwhile: add to that one
        store.rewrite(key, lambda raw: _with_ids(raw, ids), content_type=JSON)
        return key
    raise StorageError(f"{store.uri(key)} kept changing during {MANIFEST_ATTEMPTS} attempts: run again")


def _logged_ids(store: ObjectStore) -> set[str]:
    return {ticket_id for record in read_erasures(store) for ticket_id in record.ticket_ids}


def _with_ids(raw: bytes, ids: set[str]) -> bytes | None:
    listed = set(json.loads(raw)["ticket_ids"])
    return None if ids <= listed else _id_list(listed | ids)


def _id_list(ids: set[str]) -> bytes:
    return json.dumps({"ticket_ids": sorted(ids)}).encode()


# Prefect wrappers. The curated step commits with a compare-and-swap and retries inside (on a lost race
# only); the log is an If-None-Match write: both run once. The rest converge when rerun: retried.
erase_curated_and_incoming_task = once_task(erase_curated_and_incoming, "erase-curated-and-incoming")
erase_from_quarantine_task = read_task(erase_from_quarantine, "erase-from-quarantine")
published_exposure_task = read_task(published_exposure, "published-exposure")
delete_superseded_datasets_task = read_task(delete_superseded_datasets, "delete-superseded-datasets")
record_erasure_task = once_task(record_erasure, "record-erasure")
erased_ticket_ids_task = read_task(erased_ticket_ids, "read-erased-ticket-ids")
add_erased_ids_task = read_task(add_erased_ids, "add-erased-ids")  # a union: converges when rerun
