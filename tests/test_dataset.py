"""Curation: deterministic splits that never move a ticket between eval and training; dataset versions
stored as parts, written in proportion to what is new (against SeaweedFS and the local-directory store:
the tests taking `any_store`)."""

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from app import cli
from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import ingest_new_batches
from retrainer.retention import SUPERSEDED_TAG
from tasks import dataset
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    DatasetPart,
    assign_split,
    check_splits,
    dataset_versions,
    delete_unreferenced_parts,
    latest_rows,
    legacy_key,
    mark_superseded,
    parts_prefix,
    parts_to_merge,
    read_curated,
    read_part,
    version_key,
    version_parts,
    with_splits,
    write_curated,
    write_part,
)
from tasks.manifest import commit_manifest, read_manifest
from tests.consistency import assert_curated_matches_manifest
from tests.tickets import merge_curated, new_curated_rows


def _rows(ids, label="bug", text="crash"):
    return pd.DataFrame({"ticket_id": ids, "text": [text] * len(ids), "label": [label] * len(ids)})


def test_split_is_a_pure_function_of_ticket_id_with_the_expected_shares():
    ids = [f"T-{index}" for index in range(20_000)]
    splits = [assign_split(ticket_id, 0.2, 0.1) for ticket_id in ids]

    assert splits == [assign_split(ticket_id, 0.2, 0.1) for ticket_id in ids]
    assert splits.count(EVAL) / len(ids) == pytest.approx(0.2, abs=0.01)
    assert splits.count(VALIDATION) / len(ids) == pytest.approx(0.1, abs=0.01)


def test_existing_rows_keep_their_split_when_fractions_change():
    first = merge_curated(None, _rows([f"T-{index}" for index in range(500)]), 0.2, 0.1)
    second = merge_curated(first, _rows(["NEW-1"]), 0.45, 0.45)

    kept = second.set_index("ticket_id").loc[first["ticket_id"], "split"]
    assert list(kept) == list(first["split"])


def test_resent_ticket_replaces_its_row_but_not_its_split():
    first = merge_curated(None, _rows(["T-1", "T-2"], label="bug"), 0.2, 0.1)
    second = merge_curated(first, _rows(["T-1"], label="feature_request"), 0.2, 0.1)

    assert len(second) == 2
    row = second.set_index("ticket_id").loc["T-1"]
    assert row["label"] == "feature_request"
    assert row["split"] == first.set_index("ticket_id").loc["T-1", "split"]


def test_eval_tickets_never_appear_in_training():
    curated = merge_curated(None, generate_tickets(600, seed=3), 0.2, 0.1)
    splits = check_splits(curated)

    assert set(splits[EVAL]["ticket_id"]).isdisjoint(splits[TRAIN]["ticket_id"])
    assert set(splits[EVAL]["ticket_id"]).isdisjoint(splits[VALIDATION]["ticket_id"])
    assert sum(len(rows) for rows in splits.values()) == 600


def test_too_little_data_is_a_clear_error():
    curated = merge_curated(None, _rows(["only-one"]), 0.2, 0.1)

    with pytest.raises(ValueError, match="empty split"):
        check_splits(curated)


def test_curated_versions_round_trip_through_s3_and_are_immutable(store):
    curated = merge_curated(None, generate_tickets(30, seed=1), 0.2, 0.1)
    version = write_curated(store, curated)

    pd.testing.assert_frame_equal(read_curated(store, version), curated)
    assert read_curated(store, None) is None


# --- versions stored as parts -------------------------------------------------------------------------


def _objects(store) -> dict[str, str]:
    return {info.key: info.etag for info in store.list_objects("datasets/")}


def test_a_run_writes_only_its_new_rows_and_leaves_every_older_part_untouched(any_store):
    first = with_splits(None, generate_tickets(2000, seed=1, id_prefix="a"), 0.2, 0.1)
    v1 = write_curated(any_store, first)
    before = _objects(any_store)
    new = with_splits(first, generate_tickets(50, seed=2, id_prefix="b"), 0.2, 0.1)

    v2 = write_curated(any_store, new, v1)

    after = _objects(any_store)
    assert {key: after[key] for key in before} == before  # nothing written before was rewritten
    [new_part, old_part] = [version_parts(any_store, v2)[-1], *version_parts(any_store, v1)]
    assert set(after) - set(before) == {new_part.key, version_key(any_store, v2)}
    assert version_parts(any_store, v2) == [old_part, new_part] and new_part.added_by == v2
    assert new_part.rows == 50 and sum(new_part.splits.values()) == 50
    pd.testing.assert_frame_equal(read_part(any_store, new_part), new)
    sizes = {info.key: info.size for info in any_store.list_objects(parts_prefix(any_store))}
    assert sizes[new_part.key] < sizes[old_part.key] / 5  # bytes in proportion to the rows
    pd.testing.assert_frame_equal(read_curated(any_store, v2), latest_rows([first, new]))


def test_a_later_part_updates_a_ticket_and_no_ticket_ever_changes_its_split(any_store):
    first = new_curated_rows([f"T-{index}" for index in range(200)])
    v1 = write_curated(any_store, first)
    resent = new_curated_rows(["T-5", "T-6", "N-1"], first, fractions=(0.45, 0.45), label="feature_request")
    v2 = write_curated(any_store, resent, v1)
    many = new_curated_rows(
        [f"U-{index}" for index in range(400)], latest_rows([first, resent]), fractions=(0.45, 0.45)
    )
    v3 = write_curated(any_store, many, v2)  # as big as every part before it: absorbs them

    assert [len(version_parts(any_store, version)) for version in (v1, v2, v3)] == [1, 2, 1]
    for version, rows in [(v2, 200 + 1), (v3, 200 + 1 + 400)]:
        curated = read_curated(any_store, version).set_index("ticket_id")
        assert curated.index.is_unique and len(curated) == rows
        assert list(curated.loc[first["ticket_id"], "split"]) == list(first["split"])
        assert curated.loc[["T-5", "T-6", "T-7"], "label"].tolist() == ["feature_request"] * 2 + ["bug"]
        assert curated.loc["N-1", "split"] == assign_split("N-1", 0.45, 0.45)


@pytest.mark.parametrize(
    ("stored", "new", "absorbed"),
    [
        ([], 300, 0),
        ([1000], 300, 0),
        ([1000, 300], 300, 1),
        ([1000, 600, 300], 299, 0),
        ([1000, 600, 300], 300, 3),
        ([1000, 0], 1, 1),  # a part an erasure emptied
        ([0], 5, 1),  # a version written before parts (rows not counted)
    ],
)
def test_a_new_part_absorbs_the_newest_parts_while_it_holds_at_least_as_many_rows(stored, new, absorbed):
    parts = [DatasetPart(key=f"p{index}", rows=rows) for index, rows in enumerate(stored)]
    assert parts_to_merge(parts, new) == absorbed


def test_thirty_nights_keep_few_parts_and_write_each_row_a_few_times(any_store):
    curated, version, rows_written = None, None, 0
    for night in range(30):
        new = new_curated_rows([f"N{night}-{index}" for index in range(20)], curated)
        version = write_curated(any_store, new, version)
        curated = latest_rows([curated, new])
        rows_written += version_parts(any_store, version)[-1].rows

    assert [part.rows for part in version_parts(any_store, version)] == [320, 160, 80, 40]  # 30 = 0b11110
    assert rows_written == 1580  # 2.6 writes a row; a whole rewrite each night: 9,300
    pd.testing.assert_frame_equal(read_curated(any_store, version), curated)


def test_a_version_written_before_parts_reads_as_it_was_and_the_next_run_absorbs_it(any_store):
    legacy = with_splits(None, generate_tickets(60, seed=4, id_prefix="L"), 0.2, 0.1)
    buffer = io.BytesIO()
    legacy.to_parquet(buffer, index=False)
    any_store.put(legacy_key(any_store, "ds-legacy"), buffer.getvalue(), if_none_match=True)
    pd.testing.assert_frame_equal(read_curated(any_store, "ds-legacy"), legacy)

    new = with_splits(legacy, generate_tickets(10, seed=5, id_prefix="M"), 0.2, 0.1)
    upgraded = write_curated(any_store, new, "ds-legacy")
    mark_superseded(any_store, "ds-legacy")  # what the run does to the version it replaced

    [part] = version_parts(any_store, upgraded)
    assert part.key.startswith(parts_prefix(any_store)) and part.rows == 70
    pd.testing.assert_frame_equal(read_curated(any_store, upgraded), latest_rows([legacy, new]))
    assert any_store.get(legacy_key(any_store, "ds-legacy"))[0] == buffer.getvalue()  # untouched, and
    assert any_store.tags(legacy_key(any_store, "ds-legacy")) == dict([SUPERSEDED_TAG])  # listed nowhere
    later = write_curated(any_store, new_curated_rows(["Z-1"], latest_rows([legacy, new])), upgraded)
    assert version_parts(any_store, later)[0] == part  # from then on, in proportion


def test_a_bucket_written_before_parts_is_upgraded_by_the_next_ingest(run_resources):
    store = run_resources.store
    store.put("incoming/a.csv", tickets_to_csv(generate_tickets(40, seed=1)))
    first = ingest_new_batches(run_resources, "run-1")
    manifest, etag = read_manifest(store)  # made legacy: one curated.parquet, the manifest naming it
    for key in _objects(store):
        store.delete(key)
    buffer = io.BytesIO()
    first.curated.to_parquet(buffer, index=False)
    store.put(legacy_key(store, "ds-legacy"), buffer.getvalue())
    commit_manifest(store, manifest.model_copy(update={"dataset_version": "ds-legacy"}), etag)

    store.put("incoming/b.csv", tickets_to_csv(generate_tickets(10, seed=2, id_prefix="B")))
    second = ingest_new_batches(run_resources, "run-2")

    assert read_manifest(store)[0].dataset_version == second.dataset_version != "ds-legacy"
    pd.testing.assert_frame_equal(read_curated(store, second.dataset_version), second.curated)
    assert len(second.curated) == 50 and assert_curated_matches_manifest(store)
    assert store.tags(legacy_key(store, "ds-legacy")) == dict([SUPERSEDED_TAG])


def test_writes_retried_or_racing_within_a_second_are_one_write_and_other_rows_another(
    any_store, monkeypatch
):
    monkeypatch.setattr(dataset, "_now", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    base_rows = new_curated_rows([f"T-{index}" for index in range(100)])
    base = write_curated(any_store, base_rows)
    new, other = new_curated_rows(["N-1", "N-2"], base_rows), new_curated_rows(["O-1"], base_rows)

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda rows: write_curated(any_store, rows, base), [new, new, new, other]))

    assert versions[0] == versions[1] == versions[2] != versions[3]
    assert len(dataset_versions(any_store)) == 3 and len(any_store.list_objects(parts_prefix(any_store))) == 3
    pd.testing.assert_frame_equal(read_curated(any_store, versions[0]), latest_rows([base_rows, new]))
    pd.testing.assert_frame_equal(read_curated(any_store, versions[3]), latest_rows([base_rows, other]))


def test_gc_deletes_only_old_parts_that_no_version_lists(any_store, monkeypatch, capsys):
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    monkeypatch.setattr(dataset, "_now", lambda: clock[0])
    first = new_curated_rows([f"T-{index}" for index in range(100)])
    v1 = write_curated(any_store, first)
    v2 = write_curated(any_store, new_curated_rows(["B-1"], first), v1)
    v3 = write_curated(any_store, new_curated_rows(["C-1"], first), v2)  # absorbs v2's part
    old_orphan = write_part(any_store, new_curated_rows(["F-1"]))  # a failed run's part
    clock[0] += timedelta(days=2)
    young_orphan = write_part(any_store, new_curated_rows(["F-2"]))  # a run writing its version file now
    clock[0] += timedelta(hours=1)

    assert [info.key for info in delete_unreferenced_parts(any_store)] == [old_orphan.key]  # v2 lists its
    any_store.delete(version_key(any_store, v2))  # the retention rule expired the superseded version
    monkeypatch.setenv("RETRAINER_S3__ENDPOINT_URL", any_store.settings.endpoint_url)
    monkeypatch.setenv("RETRAINER_S3__BUCKET", any_store.settings.bucket)

    assert cli.main(["datasets", "gc", "--dry-run"]) == 0
    assert cli.main(["datasets", "gc"]) == 0

    absorbed = version_parts(any_store, v3)[-1]
    out = capsys.readouterr().out
    assert "would delete 1 part(s)" in out and out.count(absorbed.key) == 0 and "deleted 1 part(s)" in out
    kept = {info.key for info in any_store.list_objects(parts_prefix(any_store))}
    assert kept == {part.key for part in version_parts(any_store, v3)} | {young_orphan.key}
    assert len(read_curated(any_store, v1)) == 100 and len(read_curated(any_store, v3)) == 102
