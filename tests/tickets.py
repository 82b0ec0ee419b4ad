"""Ticket data for tests, built one way: batches dropped into ``incoming/``, and curated data as a run
leaves it (splits and lineage), built in memory."""

import pandas as pd

from app.samples import generate_tickets, tickets_to_csv
from retrainer.storage import ObjectStore
from tasks.dataset import latest_rows, with_splits


def drop_batch(store: ObjectStore, name: str, count: int, seed: int, bad_rows: int = 0) -> set[str]:
    """Upload ``incoming/<name>``: `count` generated tickets (ids prefixed `name`) plus `bad_rows` with
    an empty text; the good tickets' ids."""
    tickets = generate_tickets(count, seed=seed, id_prefix=name)
    bad = "".join(f"{name}-bad-{n},,bug,\n" for n in range(bad_rows))
    store.put(f"incoming/{name}", tickets_to_csv(tickets) + bad.encode())
    return set(tickets["ticket_id"])


def merge_curated(
    curated: pd.DataFrame | None, new_rows: pd.DataFrame, eval_fraction: float, validation_fraction: float
) -> pd.DataFrame:
    """Curated rows plus `new_rows`, as a run merges them: a re-sent ``ticket_id`` updates the row but
    keeps its split."""
    return latest_rows([curated, with_splits(curated, new_rows, eval_fraction, validation_fraction)])


def curated_from(rows: list[tuple[str, str, str]], source_key: str = "incoming/earlier.csv") -> pd.DataFrame:
    """Curated data of these (ticket_id, text, label) rows, ingested from `source_key`: with the lineage
    and split a run gives them."""
    frame = pd.DataFrame(rows, columns=["ticket_id", "text", "label"])
    lineage = {"source_key": source_key, "source_etag": '"old"', "source_row": range(1, len(frame) + 1)}
    return merge_curated(None, frame.assign(created_at="", **lineage), 0.2, 0.1)


def new_curated_rows(
    ids: list[str], curated: pd.DataFrame | None = None, *, label: str = "bug", fractions=(0.2, 0.1)
) -> pd.DataFrame:
    """A run's new rows for `ids` (text ``crash <id>``), their splits decided against `curated`, as the
    run writes them (`tasks.dataset.write_curated`)."""
    rows = pd.DataFrame({"ticket_id": ids, "text": [f"crash {i}" for i in ids], "label": [label] * len(ids)})
    return with_splits(curated, rows, *fractions)
