"""Rows against each other and against the curated data: duplicate ``ticket_id``s, one text with
conflicting labels, and which earlier ticket a repeated text is merged into.

`CuratedProfile` is what a batch is compared with: the curated data plus the batches accepted earlier
in the run (ticket ids, normalised texts with their labels, label counts and a text-length histogram
for the drift checks). Every lookup hashes and sorts: linear in a batch's rows, whatever the size of
the curated data.
"""

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from retrainer.core.labels import LABELS
from retrainer.core.row_rules import normalise_text


class _SortedChunk:
    """Strings (with columns of values) in the order of their Python hashes, for exact lookups."""

    def __init__(self, keys: np.ndarray, columns: dict[str, np.ndarray], hashes: np.ndarray) -> None:
        self.keys, self.columns, self.hashes = keys, columns, hashes
        self.order = np.argsort(hashes)
        self.sorted_hashes = hashes[self.order]

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """The position of the latest occurrence of each key (-1 where absent)."""
        # Searching in sorted order lets numpy narrow each search from the last one: far fewer cache
        # misses than a million searches at random places.
        ascending = np.argsort(hashes)
        left, right = np.empty(len(keys), dtype=np.intp), np.empty(len(keys), dtype=np.intp)
        left[ascending] = np.searchsorted(self.sorted_hashes, hashes[ascending], side="left")
        right[ascending] = np.searchsorted(self.sorted_hashes, hashes[ascending], side="right")
        found = np.full(len(keys), -1, dtype=np.intp)
        single = np.flatnonzero(right - left == 1)  # almost every hit: confirm it is the same string
        candidates = self.order[left[single]]
        same = self.keys[candidates] == keys[single]
        found[single[same]] = candidates[same]
        for row in np.flatnonzero(right - left > 1):  # a repeated key, or (rarely) two strings, one hash
            matches = [at for at in self.order[left[row] : right[row]] if self.keys[at] == keys[row]]
            found[row] = max(matches, default=-1)  # the latest of equal keys
        return found


class KeyedRows:
    """Exact string lookups in data that grows batch by batch, in time linear in each batch's rows.

    Keys are hashed with Python's own str hash (computed in C, cached on each string object) into int64s,
    sorted once per chunk and searched with numpy; every hash match is confirmed by comparing the
    strings, so a collision never matches a wrong row. A chunk absorbs the smaller chunks before it
    (like a binary counter), so many small batches leave a few chunks and each row is re-sorted O(log n)
    times. Dicts would do the same in Python at several times the cost for a million rows. Chunks are
    sorted when first searched: the last batch of a run never pays for it.
    """

    def __init__(self, *columns: str) -> None:
        self.column_names = columns
        self.chunks: list[_SortedChunk] = []
        self.unsorted: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

    def add(self, keys: np.ndarray, hashes: np.ndarray, **columns: np.ndarray) -> None:
        """Take `keys` (with their `string_hashes`) and values; a key added again maps to its latest ones."""
        self.unsorted.append((keys, hashes, columns))

    def get(self, keys: np.ndarray, hashes: np.ndarray) -> dict[str, np.ndarray]:
        """Each column's latest value for each of `keys` (with their `string_hashes`); None where absent."""
        for added, added_hashes, columns in self.unsorted:
            self._sort_in(added, added_hashes, columns)
        self.unsorted.clear()
        values = {name: np.full(len(keys), None, dtype=object) for name in self.column_names}
        missing = np.arange(len(keys))
        for chunk in reversed(self.chunks):  # newest first: the latest value wins
            found = chunk.find(keys[missing], hashes[missing])
            hit = found >= 0
            for name, column in values.items():
                column[missing[hit]] = chunk.columns[name][found[hit]]
            missing = missing[~hit]
        return values

    def _sort_in(self, keys: np.ndarray, hashes: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        while self.chunks and len(self.chunks[-1]) <= len(keys):
            older = self.chunks.pop()
            keys, hashes = np.concatenate([older.keys, keys]), np.concatenate([older.hashes, hashes])
            columns = {name: np.concatenate([older.columns[name], columns[name]]) for name in columns}
        self.chunks.append(_SortedChunk(keys, columns, hashes))


@dataclass(frozen=True)
class RowKeys:
    """What the checks against the batch and the curated data compare, one array entry per row."""

    ids: np.ndarray  # ticket_id as str
    id_hashes: np.ndarray
    labels: np.ndarray  # as str, after aliases
    texts: np.ndarray  # normalised
    text_hashes: np.ndarray

    @classmethod
    def of(cls, rows: pd.DataFrame, texts: np.ndarray | None = None) -> "RowKeys":
        """The keys of `rows` (`texts`: their normalised texts, where already known)."""
        ids = rows["ticket_id"].astype(str).to_numpy(dtype=object)
        texts = normalise_text(rows["text"]) if texts is None else texts
        labels = rows["label"].astype(str).to_numpy(dtype=object)
        return cls(
            ids=ids,
            id_hashes=string_hashes(ids),
            labels=labels,
            texts=texts,
            text_hashes=string_hashes(texts),
        )

    def at(self, mask: np.ndarray) -> "RowKeys":
        """The keys of the rows at `mask`."""
        return RowKeys(*(getattr(self, name)[mask] for name in self.__dataclass_fields__))

    @cached_property
    def id_codes(self) -> np.ndarray:
        """Equal ticket_ids get equal codes (see `_codes`)."""
        return _codes(self.ids, self.id_hashes)

    @cached_property
    def text_codes(self) -> np.ndarray:
        """Equal normalised texts get equal codes (see `_codes`)."""
        return _codes(self.texts, self.text_hashes)


@dataclass
class CuratedProfile:
    """What validation compares a batch with: the curated data plus batches accepted earlier this run."""

    tickets: KeyedRows = field(default_factory=lambda: KeyedRows("source_key"))  # ticket_id -> source
    texts: KeyedRows = field(default_factory=lambda: KeyedRows("label", "ticket_id"))  # normalised text
    label_counts: dict[str, int] = field(default_factory=dict)
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # by length

    @classmethod
    def of(cls, curated: pd.DataFrame | None) -> "CuratedProfile":
        """The profile of a curated dataset (empty before the first one)."""
        profile = cls()
        if curated is not None and len(curated):
            profile.add(curated)
        return profile

    def add(self, rows: pd.DataFrame, keys: RowKeys | None = None) -> None:
        """Take curated `rows` (with their keys, where already known) into account for later batches."""
        keys = RowKeys.of(rows) if keys is None else keys
        sources = rows["source_key"].to_numpy(dtype=object)
        self.tickets.add(keys.ids, keys.id_hashes, source_key=sources)
        self.texts.add(keys.texts, keys.text_hashes, label=keys.labels, ticket_id=keys.ids)
        for label, count in rows["label"].value_counts().items():
            self.label_counts[label] = self.label_counts.get(label, 0) + int(count)
        # A histogram, not the lengths themselves: the median of all batches so far stays cheap.
        counts = np.bincount(rows["text"].str.len().to_numpy(dtype=np.int64))
        size = max(len(counts), len(self.length_counts))
        self.length_counts = np.pad(self.length_counts, (0, size - len(self.length_counts))) + np.pad(
            counts, (0, size - len(counts))
        )

    def matches(self, keys: RowKeys) -> dict[str, np.ndarray]:
        """Per row: ``source_key`` of the curated ticket with its ticket_id; ``label`` and ``ticket_id`` of
        the curated ticket with its text (None where there is none)."""
        return {
            **self.texts.get(keys.texts, keys.text_hashes),
            "source_key": self.tickets.get(keys.ids, keys.id_hashes)["source_key"],
        }

    @property
    def rows(self) -> int:
        return sum(self.label_counts.values())

    def median_length(self) -> float:
        """The median text length (characters) of the curated rows, as `np.median` would give it."""
        cumulative = np.cumsum(self.length_counts)
        total = int(cumulative[-1]) if len(cumulative) else 0
        if not total:
            return 0.0
        lower, upper = np.searchsorted(cumulative, [(total - 1) // 2, total // 2], side="right")
        return (float(lower) + float(upper)) / 2


def relational_problems(keys: RowKeys, curated: dict[str, np.ndarray], clean: np.ndarray, source: str):
    """(mask, reason) pairs for checks against the rest of the batch and the curated data.

    Hashing and sorting only: linear in the batch's rows, whatever the size of the curated data.
    """
    positions = np.flatnonzero(clean)
    text_codes = keys.text_codes[positions]
    labels = keys.labels[positions]
    label_codes = sum(code * (labels == label) for code, label in enumerate(LABELS))  # clean: in LABELS
    lowest, highest = np.full(len(clean), len(LABELS)), np.full(len(clean), -1)
    np.minimum.at(lowest, text_codes, label_codes)
    np.maximum.at(highest, text_codes, label_codes)
    return [
        (
            _at(positions, _first_with_code(keys.id_codes, positions) != positions, len(clean)),
            "duplicate ticket_id (an earlier row of this batch has it)",
        ),
        (
            clean & pd.notna(curated["source_key"]) & (curated["source_key"] != source),
            "ticket_id already curated from another file",
        ),
        (
            _at(positions, lowest[text_codes] != highest[text_codes], len(clean)),
            "the same text appears with different labels in this batch",
        ),
        (
            clean & pd.notna(curated["label"]) & (curated["label"] != keys.labels),
            "the same text is curated with a different label",
        ),
    ]


def merge_targets(keys: RowKeys, curated_ticket: np.ndarray, good: np.ndarray) -> np.ndarray:
    """For each good row whose text a curated ticket or an earlier good row of the batch already has (with
    the same label: another label made it a bad row), the ticket_id that stands for it; None elsewhere.

    A curated ticket stands for its text even where it comes later in the batch; a row that is that
    ticket itself (a rewritten object re-sending it) is no duplicate.
    """
    positions = np.flatnonzero(good)
    ids = keys.ids[positions]
    keeper = curated_ticket[positions]
    keeper = np.where(pd.notna(keeper), keeper, keys.ids[_first_with_code(keys.text_codes, positions)])
    duplicate_of = np.full(len(good), None, dtype=object)
    duplicate_of[positions] = np.where(keeper != ids, keeper, None)
    return duplicate_of


def _codes(values: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Equal strings get equal codes (0, 1, ... below len(values)). Factorises the strings'
    `string_hashes` (int64s: fast), then confirms that each value equals the first value with its code;
    a hash collision (never seen) falls back to factorising the strings themselves."""
    codes, _ = pd.factorize(hashes)
    everywhere = np.arange(len(values))
    if not (values[_first_with_code(codes, everywhere)] == values).all():
        codes, _ = pd.factorize(values)
    return codes


def _first_with_code(codes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each of `positions` (ascending), the first of `positions` whose code is the same."""
    first = np.empty(len(codes), dtype=np.intp)
    first[codes[positions[::-1]]] = positions[::-1]  # the last write per code is its first position
    return first[codes[positions]]


def string_hashes(values: np.ndarray) -> np.ndarray:
    """Python's hash of each string, as int64s (the same string always hashes alike within a process)."""
    return np.fromiter(map(hash, values), dtype=np.int64, count=len(values))


def _at(positions: np.ndarray, flags: np.ndarray, rows: int) -> np.ndarray:
    """Spread flags of the rows at `positions` back onto all rows."""
    mask = np.zeros(rows, dtype=bool)
    mask[positions] = flags
    return mask
