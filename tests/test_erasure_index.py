"""Erasure in proportion (issue 38 item 4): the id index lets `forget` read only the objects that can hold
the ids, and what it spares provably holds none of them. Against a real SeaweedFS."""

import pandas as pd

from app.samples import generate_tickets, tickets_to_csv
from flows.forget import forget
from flows.retrain import ingest_new_batches
from retrainer.id_index import ANY_CONTENT, compact_index, index_prefix, record_holdings, whereabouts
from tasks.dataset import parts_prefix
from tests.consistency import assert_consistent, assert_erased_nowhere


def test_whereabouts_tells_what_may_hold_an_id_and_reads_what_it_does_not_describe(any_store):
    record_holdings(any_store, {("incoming/a.csv", '"e1"'): ["T-1", " T-2 "], ("incoming/b.csv", '"e1"'): []})
    record_holdings(any_store, {("parts/p1", ANY_CONTENT): ["T-2"], ("parts/p2", ANY_CONTENT): [7]})

    where = whereabouts(any_store, ["T-2", "7"])

    assert where.may_hold("incoming/a.csv", '"e1"')  # holds T-2 (stripped as ingestion reads it)
    assert not where.may_hold("incoming/b.csv", '"e1"')  # described: holds no id
    assert where.may_hold("incoming/b.csv", '"e2"')  # other content than described: read
    assert where.may_hold("incoming/new.csv", '"e1"')  # not described at all: read
    assert where.may_hold("parts/p1") and where.may_hold("parts/p2")  # an integer id reads as text
    assert not whereabouts(any_store, ["T-9"]).may_hold("parts/p1")
    assert where.index_parts == 2 and where.objects_indexed == 4
    assert whereabouts(any_store, ["T-2"], use_index=False).may_hold("incoming/b.csv", '"e1"')


def test_compacting_the_index_merges_its_parts_and_changes_no_answer(any_store):
    for number in range(3):
        record_holdings(any_store, {(f"parts/p{number}", ANY_CONTENT): [f"T-{number}", "T-9"]})
    before = whereabouts(any_store, ["T-1"])

    assert compact_index(any_store, min_parts=4) == 0  # too few parts: left as they are
    assert compact_index(any_store, min_parts=3) == 3

    after = whereabouts(any_store, ["T-1"])
    assert after.index_parts == 1 and len(any_store.list_objects(index_prefix(any_store))) == 1
    assert (
        (after.indexed, after.holding)
        == (before.indexed, before.holding)
        == (
            {(f"parts/p{number}", ANY_CONTENT) for number in range(3)},
            {("parts/p1", ANY_CONTENT)},
        )
    )


def _batch(number: int) -> pd.DataFrame:
    return generate_tickets(10, seed=number, id_prefix=f"n{number}-")


def test_forget_reads_only_the_objects_that_can_hold_the_ids_and_leaves_none_holding_them(run_resources):
    store = run_resources.store
    batches = {n: _batch(n) for n in range(24)}
    x = batches[3]["ticket_id"].iloc[0]
    y = batches[3]["ticket_id"].iloc[1]
    bad = pd.DataFrame([{"ticket_id": x, "text": "Where is my refund", "label": "nonsense"}])
    batches[7] = pd.concat([batches[7], bad], ignore_index=True)  # X again, as a rejected row
    for n in range(10, 15):  # other batches' rejected rows: quarantine files that cannot hold X
        batches[n] = pd.concat([batches[n], bad.assign(ticket_id=f"bad-{n}")], ignore_index=True)
    for n in range(20):
        store.put(f"incoming/night-1/{n}.csv", tickets_to_csv(batches[n]))
    store.put("incoming/night-1/ragged.csv", f"ticket_id,text,label\n{x},crash,bug,extra\n".encode())
    ingest_new_batches(run_resources, "run-1")  # the ragged batch is quarantined whole
    for n in range(20, 24):
        store.put(f"incoming/night-2/{n}.csv", tickets_to_csv(batches[n]))
    ingest_new_batches(run_resources, "run-2")
    # Since the last run: a producer overwrote a batch (new content, not described) and sent X again.
    store.put("incoming/night-1/5.csv", tickets_to_csv(pd.concat([_batch(30), batches[3][:1]])))
    store.put("incoming/late.csv", tickets_to_csv(batches[3][:1]))
    incoming = len(store.list_objects("incoming/"))
    quarantine = len(store.list_objects("quarantine/"))

    record = forget([x], "dpo", resources=run_resources)

    assert_erased_nowhere(store, {x})
    assert_consistent(store)
    # Read: the batch holding X, the one that rejected it, the unreadable one (never described), the
    # overwritten one and the late one (content not described yet). Not the other 20 of 26.
    assert record.curated.incoming_read == 5 < incoming == 26
    assert sorted(record.curated.incoming_rewritten) == [
        "incoming/late.csv",
        "incoming/night-1/3.csv",
        "incoming/night-1/5.csv",
        "incoming/night-1/7.csv",
    ]
    assert record.curated.incoming_deleted == ["incoming/night-1/ragged.csv"]
    # Read: the rejected row's report and rows, the unreadable batch and its report. Not the other 10.
    assert record.quarantine.read == 4 < quarantine == 14
    assert record.quarantine.deleted == ["quarantine/run-1/night-1/ragged.csv"]
    assert record.curated.parts_read == 1 < len(store.list_objects(parts_prefix(store)))
    assert "objects read: 1 curated part(s), 5 incoming, 4 quarantine" in "\n".join(record.summary())

    # The rewritten batches were described again at their new content: a second erasure reads one.
    second = forget([y], "dpo", resources=run_resources)

    assert second.curated.incoming_read == 1
    assert second.curated.incoming_rewritten == ["incoming/night-1/3.csv"]
    assert_erased_nowhere(store, {x, y})
    assert len(store.list_objects(index_prefix(store))) >= 4  # runs, parts, quarantines, the rewrites
