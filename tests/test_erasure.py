"""Erasure on request (`retrainer forget`): the pure parts in memory, then the flow and the command end to
end against a real SeaweedFS."""

import gzip
import io
import json

import pandas as pd
import pyarrow
import pyarrow.parquet as pq
import pytest

from app import cli
from app.samples import generate_tickets, tickets_to_csv
from flows.forget import forget
from flows.retrain import ingest_new_batches
from retrainer.core.batch_files import BatchFormatError
from retrainer.core.batch_files.formats import ids_in_bytes, ids_in_unreadable, parse_batch, without_tickets
from retrainer.core.known_predictions import PROBABILITY_COLUMNS
from retrainer.resources import Resources
from retrainer.settings import IngestSettings, RetrainerSettings
from retrainer.storage import PreconditionFailedError
from tasks.dataset import (
    EVAL,
    TRAIN,
    VALIDATION,
    assign_split,
    legacy_key,
    read_curated,
    version_key,
    version_parts,
    write_curated,
)
from tasks.erasure import (
    ErasureRequestError,
    add_erased_ids,
    delete_superseded_datasets,
    drop_tickets,
    erase_curated_and_incoming,
    erased_ids_key,
    erased_ticket_ids,
    ids_by_split,
    problems_without_tickets,
    read_erasures,
    requested_ids,
    rows_of_tickets,
)
from tasks.known_predictions import record_predictions
from tasks.manifest import Manifest, commit_manifest, read_manifest
from tasks.registry import publish_model
from tests.consistency import assert_consistent
from tests.tickets import new_curated_rows

LIMIT = 2**20
ALIASES = {"id": "ticket_id", "body": "text"}


# --- in memory --------------------------------------------------------------------------------------


def test_requested_ids_are_stripped_deduplicated_and_never_empty():
    assert requested_ids([" T-1", "T-2", "T-1 ", ""]) == ["T-1", "T-2"]
    with pytest.raises(ErasureRequestError, match="no ticket id"):
        requested_ids(["  ", ""])


def test_drop_tickets_keeps_every_other_row_and_its_split():
    curated = pd.DataFrame(
        {
            "ticket_id": ["a", "b", "c", "d"],
            "text": ["t1", "t2", "t3", "t4"],
            "split": [TRAIN, EVAL, TRAIN, VALIDATION],
        }
    )

    kept, found = drop_tickets(curated, {"b", "d", "zz"})

    assert found == {"b", "d"}
    assert kept.to_dict("records") == [
        {"ticket_id": "a", "text": "t1", "split": TRAIN},
        {"ticket_id": "c", "text": "t3", "split": TRAIN},
    ]
    assert ids_by_split(curated, {"a", "b", "d", "zz"}) == {TRAIN: ["a"], VALIDATION: ["d"], EVAL: ["b"]}


def test_a_csv_loses_only_the_records_of_the_ids_and_keeps_every_other_byte():
    raw = (
        "\ufeffid,body,label\r\n"
        'T-1,"first line\r\nsecond, quoted",bug\r\n'
        "T-10,keep me,bug\r\n"
        '  T-2 ,"gone ""too""",feature_request\r\n'
        "\r\n"
        "T-3,last,bug"
    ).encode()

    kept, found = without_tickets(raw, "incoming/x.csv", {"T-1", "T-2"}, ALIASES, LIMIT)

    assert found == {"T-1", "T-2"}
    assert kept == "\ufeffid,body,label\r\nT-10,keep me,bug\r\n\r\nT-3,last,bug".encode()
    assert list(parse_batch(kept, "incoming/x.csv", ALIASES)["ticket_id"]) == ["T-10", "T-3"]


def test_a_gzipped_jsonl_stays_gzipped_and_keeps_broken_lines_and_integer_ids_work():
    lines = [
        '{"ticket_id": 7, "text": "a"}',
        "{broken",
        '{"ticket_id": "8", "text": "b"}',
        '{"ticket_id": 70}',
    ]
    raw = gzip.compress("\n".join(lines).encode())

    kept, found = without_tickets(raw, "incoming/x.jsonl.gz", {"7", "8"}, {}, LIMIT)

    assert found == {"7", "8"}
    assert gzip.decompress(kept).decode() == "{broken\n" + '{"ticket_id": 70}'


def test_a_parquet_file_keeps_its_schema_and_codec():
    table = pyarrow.table({"ticket_id": ["a", "b", "c"], "text": ["x", "y", "z"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")

    kept, found = without_tickets(buffer.getvalue(), "incoming/x.parquet", {"b"}, {}, LIMIT)

    assert found == {"b"}
    rewritten = pq.ParquetFile(io.BytesIO(kept))
    assert rewritten.metadata.row_group(0).column(0).compression == "ZSTD"
    assert rewritten.read().to_pydict() == {"ticket_id": ["a", "c"], "text": ["x", "z"]}


def test_a_file_without_the_ids_is_returned_unchanged_and_an_unreadable_one_raises():
    raw = b"ticket_id,text,label\nA,t,bug\n"
    assert without_tickets(raw, "incoming/x.csv", {"B"}, {}, LIMIT) == (raw, set())
    with pytest.raises(BatchFormatError):
        without_tickets(b"ticket_id,text\nB,t,extra\n", "incoming/x.csv", {"B"}, {}, LIMIT)


def test_ids_are_found_in_bytes_as_whole_tokens_also_inside_gzip():
    raw = b"ticket_id,text\nT-10,x,y\nAT-1,z\n"
    assert ids_in_bytes(raw, "q/x.csv", {"T-1", "T-10"}, LIMIT) == {"T-10"}
    assert ids_in_bytes(gzip.compress(raw), "q/x.csv.gz", {"T-10"}, LIMIT) == {"T-10"}
    assert ids_in_bytes(b"not gzip", "q/x.csv.gz", {"T-10"}, LIMIT) is None


def test_an_unreadable_file_holds_an_id_only_where_a_ticket_id_stands():
    ragged = b'id,body,label\nT-2,crash since 11 days ago,bug,extra\n 11 ,"stray "quote",bug\n'
    assert ids_in_unreadable(ragged, "incoming/x.csv", {"11", "T-2", "bug"}, ALIASES, LIMIT) == (
        {"T-2", "11"},
        {"bug"},  # a label, not a ticket id: only mentioned
    )
    assert ids_in_unreadable(ragged, "incoming/x.csv", {"11", "T-2"}, {}, LIMIT) == (set(), {"11", "T-2"})
    lines = b'{"ticket_id": 11, "text": "x"}\n{broken, "ticket_id": "12"\n"ticket_id 13"\n'
    assert ids_in_unreadable(lines, "q/x.jsonl", {"11", "12", "13"}, {}, LIMIT) == ({"11"}, {"12", "13"})
    assert ids_in_unreadable(gzip.compress(lines), "q/x.jsonl.gz", {"11"}, {}, LIMIT) == ({"11"}, set())
    assert ids_in_unreadable(b"not gzip", "q/x.csv.gz", {"11"}, {}, LIMIT) is None


def test_problems_of_the_tickets_rows_or_naming_them_are_dropped():
    report = {
        "source_key": "incoming/b.csv",
        "problems": [
            "incoming/b.csv: row 3: label 'x' is not one of bug, feature_request, general_inquiry",
            "incoming/b.csv: row 4: duplicate ticket_id T-9",
            "incoming/b.csv: row 5: duplicate ticket_id T-90",
            "incoming/b.csv: row 30: text too short",
        ],
    }

    kept, dropped = problems_without_tickets(report, {3}, {"T-9"})

    assert dropped == 2
    assert kept["problems"] == report["problems"][2:]
    assert kept["source_key"] == "incoming/b.csv"


def test_rows_of_tickets_reads_the_spreadsheet_safe_quote():
    rejected = b"ticket_id,text,source_row\nT-1,x,2\n'=T-2,y,5\nT-3,z,7\n"
    assert rows_of_tickets(rejected, {"T-1", "=T-2"}) == {2, 5}
    assert without_tickets(rejected, "q/b.csv.rejected.csv", {"=T-2"}, {}, LIMIT)[1] == {"=T-2"}


# --- end to end against SeaweedFS --------------------------------------------------------------------


def _trained_id(tickets: pd.DataFrame, settings: RetrainerSettings) -> str:
    """A ticket id whose split is train, so a model of its dataset was trained on it."""
    return next(
        ticket_id
        for ticket_id in tickets["ticket_id"]
        if assign_split(ticket_id, settings.eval_fraction, settings.validation_fraction) == TRAIN
    )


def _jsonl_gz(tickets: pd.DataFrame) -> bytes:
    return gzip.compress(tickets.to_json(orient="records", lines=True).encode())


def _publish(store, tmp_path, version: str, dataset_version: str) -> None:
    folder = tmp_path / version
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    publish_model(store, folder, version, {"accuracy": 0.5, "dataset_version": dataset_version})


def _holds(data: bytes, ticket_id: str) -> bool:
    return ids_in_bytes(data, "any", {ticket_id}, LIMIT) == {ticket_id}


@pytest.fixture
def erasable(run_resources, tmp_path):
    """A store with X curated (from a gzipped JSON Lines batch), rejected as a row of a CSV batch and held
    by a batch rejected whole; a model published on the first dataset version; an older version without X."""
    store, settings = run_resources.store, run_resources.settings
    first = generate_tickets(30, seed=1, id_prefix="a")
    x = _trained_id(first, settings)
    store.put("incoming/a.jsonl.gz", _jsonl_gz(first))
    without_x = ingest_new_batches(run_resources, "run-1").curated
    older = write_curated(store, without_x[without_x["ticket_id"] != x])  # a superseded version without X
    first_version = read_manifest(store)[0].dataset_version
    _publish(store, tmp_path, "m-1", first_version)
    kept = first["ticket_id"][first["ticket_id"] != x].iloc[0]
    predictions = {column: [0.2, 0.3] for column in PROBABILITY_COLUMNS}
    stored = pd.DataFrame({"ticket_id": [x, kept], "text_sha256": [b"x" * 32, b"k" * 32], **predictions})
    record_predictions(store, "m-1", "run-1", stored)  # m-1's eval predictions, X among them

    second = generate_tickets(12, seed=2, id_prefix="b")
    bad_row = pd.DataFrame([{"ticket_id": x, "text": "Refund my second order please", "label": "nonsense"}])
    store.put("incoming/b.csv", tickets_to_csv(pd.concat([second, bad_row], ignore_index=True)))
    store.put("incoming/c.csv", f"ticket_id,text,label\n{x},crash on save,bug,extra\n".encode())
    ingestion = ingest_new_batches(run_resources, "run-2")
    assert [result.key for result in ingestion.validated if result.rejected_whole] == ["incoming/c.csv"]
    assert any(_holds(store.get(info.key)[0], x) for info in store.list_objects("quarantine/run-2/"))
    return store, x, first_version, ingestion, older


def test_forget_erases_a_ticket_everywhere_records_it_and_names_the_model_trained_on_it(
    run_resources, erasable
):
    store, x, first_version, ingestion, older = erasable
    before = ingestion.curated

    record = forget([x], "dpo@example.com", note="request 42", resources=run_resources)
    erased = record.curated

    # Curated: a new version without X, every other row as it was (split included); the manifest at it.
    manifest, _ = read_manifest(store)
    after = read_curated(store, record.curated.dataset_version_after)
    assert (
        record.curated.dataset_version_before
        == ingestion.dataset_version
        != record.curated.dataset_version_after
    )
    assert (
        manifest.dataset_version == record.curated.dataset_version_after and record.curated.rows_removed == 1
    )
    pd.testing.assert_frame_equal(after, before[before["ticket_id"] != x].reset_index(drop=True))

    # Incoming: rewritten in its format (the manifest knows the new ETag), or deleted when unreadable.
    assert erased.incoming_rewritten == ["incoming/a.jsonl.gz", "incoming/b.csv"]
    assert erased.incoming_deleted == ["incoming/c.csv"]
    for key in erased.incoming_rewritten:
        data, etag = store.get(key)
        assert manifest.objects[key].etag == etag
        assert x not in set(parse_batch(data, key)["ticket_id"])
    assert gzip.decompress(store.get("incoming/a.jsonl.gz")[0])  # still gzip
    assert store.get_if_exists("incoming/c.csv") is None

    # Quarantine: nothing names X any more; the copy of the batch rejected whole is gone.
    assert "quarantine/run-2/c.csv" in record.quarantine.deleted
    assert "quarantine/run-2/b.csv.rejected.csv" in record.quarantine.rewritten
    assert not [info.key for info in store.list_objects("quarantine/") if _holds(store.get(info.key)[0], x)]
    errors = json.loads(store.get("quarantine/run-2/b.csv.errors.json")[0])
    assert errors["problems"] == []

    # Superseded versions holding X are deleted; one without X is kept.
    assert sorted(record.datasets_deleted) == sorted([first_version, ingestion.dataset_version])
    assert store.list_objects(f"datasets/{first_version}/") == []
    assert store.get_if_exists(version_key(store, older)) is not None

    # The model published on the first version was trained on X.
    assert record.trained_on_versions == ["m-1"]
    assert record.models[0].trained_on == [x] and record.models[0].evaluated_on == []

    # The model's stored predictions lose X's row and keep the others.
    assert record.predictions_rewritten == ["predictions/m-1/run-1.parquet"]
    left = pd.read_parquet(io.BytesIO(store.get("predictions/m-1/run-1.parquet")[0]))
    assert len(left) == 1 and left["ticket_id"].iloc[0] != x

    # The log: one object naming X, who and when, that cannot be overwritten.
    [logged] = read_erasures(store)
    assert logged.log_key == record.log_key and logged.ticket_ids == [x]
    assert logged.requested_by == "dpo@example.com" and logged.requested_at == record.requested_at
    assert logged.note == "request 42" and logged.not_found == []
    with pytest.raises(PreconditionFailedError):
        store.put(record.log_key, b"{}", if_none_match=True)

    # The nightly run's first step ingests nothing again and trains on data without X.
    nightly = ingest_new_batches(run_resources, "run-3")
    assert nightly.validated == [] and nightly.dataset_version == erased.dataset_version_after
    assert x not in set(nightly.curated["ticket_id"])
    # The manifest still accounts for every curated row (issue 35 item 11), and X is nowhere.
    assert assert_consistent(store) == set(before["ticket_id"]) - {x}

    # The same request again finds nothing, changes nothing, and is recorded.
    again = forget([x], "dpo@example.com", resources=run_resources)
    assert (
        again.not_found == [x] and again.curated.dataset_version_after == record.curated.dataset_version_after
    )
    assert again.curated.incoming_rewritten == again.quarantine.rewritten == again.datasets_deleted == []
    assert again.predictions_rewritten == []
    assert [model.dataset for model in again.models] == ["unknown"]
    assert len(read_erasures(store)) == 2


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_erasure_rewrites_each_part_holding_a_ticket_and_deletes_what_held_it_elsewhere(store):
    first = new_curated_rows([f"T-{index}" for index in range(100)])
    v1 = write_curated(store, first)
    resent = new_curated_rows(["T-3"], first, label="feature_request")  # a second part holds T-3 too
    v2 = write_curated(store, resent, v1)
    without = write_curated(store, first[first["ticket_id"] != "T-3"])  # a version without T-3
    store.put(legacy_key(store, "ds-legacy"), _parquet_bytes(first))  # written before parts, holding T-3
    commit_manifest(store, Manifest(dataset_version=v2), None)
    before, held = read_curated(store, v2), [part.key for part in version_parts(store, v2)]

    erased = erase_curated_and_incoming(store, ["T-3"], IngestSettings())
    deleted = delete_superseded_datasets(store, ["T-3"], erased.dataset_version_after)

    after = erased.dataset_version_after
    assert (
        erased.found == ["T-3"]
        and erased.rows_removed == 1
        and read_manifest(store)[0].dataset_version == after
    )
    pd.testing.assert_frame_equal(
        read_curated(store, after), before[before["ticket_id"] != "T-3"].reset_index(drop=True)
    )
    assert [part.rows for part in version_parts(store, after)] == [99, 0]  # the emptied part stays listed
    assert sorted(deleted.versions) == sorted([v1, v2, "ds-legacy"])
    assert sorted(deleted.parts) == sorted(held)
    stored = [info.key for info in store.list_objects("datasets/") if info.key.endswith(".parquet")]
    assert not [
        key for key in stored if "T-3" in set(pd.read_parquet(io.BytesIO(store.get(key)[0]))["ticket_id"])
    ]
    listed = {part.key for version in (after, without) for part in version_parts(store, version)}
    assert set(stored) == listed and store.get_if_exists(version_key(store, without)) is not None

    # The next run's part absorbs the emptied one; asking again finds nothing.
    later = write_curated(store, new_curated_rows(["N-1"], read_curated(store, after)), after)
    assert [part.rows for part in version_parts(store, later)] == [99, 1]
    again = erase_curated_and_incoming(store, ["T-3"], IngestSettings())
    assert again.found == [] and delete_superseded_datasets(store, ["T-3"], later).versions == []


def test_forget_deletes_an_unreadable_batch_only_where_the_id_is_a_ticket_id(run_resources):
    """Issue 35 item 8: `forget 11` deleted an unreadable batch of ten other tickets, and its quarantined
    copy, because a text said "11 days ago"."""
    store = run_resources.store
    rows = [f"u-{n},Export crashed again{' 11 days ago' if n == 3 else ''},bug" for n in range(10)]
    mentions = ("ticket_id,text,label\n" + "\n".join(rows) + ",extra\n").encode()  # ragged: unreadable
    holds = b"ticket_id,text,label\n11,Login fails,bug,extra\n12,Dark mode please,feature_request\n"
    store.put("incoming/mentions.csv", mentions)
    store.put("incoming/holds.csv", holds)
    ingest_new_batches(run_resources, "run-1")  # both quarantined whole

    record = forget(["11"], "dpo", resources=run_resources)

    assert store.get("incoming/mentions.csv")[0] == mentions
    assert store.get("quarantine/run-1/mentions.csv")[0] == mentions
    assert record.curated.incoming_deleted == ["incoming/holds.csv"]
    assert record.quarantine.deleted == ["quarantine/run-1/holds.csv"]
    assert record.review == [
        "incoming/mentions.csv: unreadable; mentions 11 but not as a ticket id: kept",
        "quarantine/run-1/mentions.csv: unreadable; mentions 11 but not as a ticket id: kept",
    ]
    assert "kept, to review" in "\n".join(record.summary()) and record.not_found == []
    assert "Export crashed" not in record.model_dump_json()  # ids and keys only, no ticket text


def test_a_request_for_ids_found_nowhere_is_still_recorded(run_resources):
    record = forget(["nobody-1"], "dpo", resources=run_resources)

    assert record.not_found == ["nobody-1"] and record.curated.dataset_version_after is None
    assert [logged.ticket_ids for logged in read_erasures(run_resources.store)] == [["nobody-1"]]


def test_every_erased_id_is_in_one_list_a_run_reads_once_and_a_log_from_before_it_is_folded_in(
    run_resources,
):
    store = run_resources.store
    forget(["nobody-1"], "dpo", resources=run_resources)
    assert json.loads(store.get(erased_ids_key(store))[0]) == {"ticket_ids": ["nobody-1"]}

    store.delete(erased_ids_key(store))  # a bucket whose erasures predate the list: read from the log
    assert erased_ticket_ids(store) == {"nobody-1"}
    add_erased_ids(store, ["nobody-2"])  # the first addition folds the log in
    listed, etag = store.get(erased_ids_key(store))
    assert json.loads(listed) == {"ticket_ids": ["nobody-1", "nobody-2"]}
    add_erased_ids(store, ["nobody-2"])  # known already: not rewritten
    assert store.get(erased_ids_key(store))[1] == etag
    forget(["nobody-3"], "dpo", resources=run_resources)
    assert erased_ticket_ids(store) == {"nobody-1", "nobody-2", "nobody-3"}


def test_retrainer_forget_prints_a_summary_and_refuses_a_blank_id(flow_store_env, retrain_env, capsys):
    settings = RetrainerSettings(s3=retrain_env)
    tickets = generate_tickets(20, seed=3, id_prefix="c")
    x = tickets["ticket_id"].iloc[0]
    flow_store_env.put("incoming/c.csv", tickets_to_csv(tickets))
    ingest_new_batches(Resources(settings, flow_store_env), "run-1")

    code = cli.main(["forget", x, "nobody-1", "--requested-by", "dpo", "--note", "request 7"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 ticket id(s), by dpo" in out and "(1 row(s) removed)" in out
    assert "not found anywhere: nobody-1" in out and "recorded in state/erasure/" in out
    [logged] = read_erasures(flow_store_env)
    assert logged.note == "request 7" and x not in set(
        read_curated(flow_store_env, logged.curated.dataset_version_after)["ticket_id"]
    )

    assert cli.main(["forget", "  "]) == 2
    assert capsys.readouterr().err.strip().startswith("retrainer: error: no ticket id to forget")
