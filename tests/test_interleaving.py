"""Interleavings of runs and erasures, made deterministic with the fault proxy (tests/fault_proxy.py).

One operation goes through the proxy, which holds one of its conditional writes (the manifest commit,
the dataset version file, an ``incoming/`` rewrite, the production pointer) until the other operation,
talking to SeaweedFS directly, has run to its end; then the held write is let through. Each case ends
with a run's ingestion of whatever is left and the bucket's invariants (tests/consistency.py): no row
lost or doubled, no erased ticket anywhere, the manifest agreeing with the curated rows, every listed
part present, the history ending at the pointer.

Runs are ingestion-only (`ingest_new_batches`: the part of a run that the manifest protocol concerns)
except where the pointer flip is held: those train the tiny model with one epoch.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.samples import generate_tickets, tickets_to_csv
from flows.forget import forget
from flows.retrain import ingest_new_batches, retrain
from retrainer.resources import Resources
from retrainer.storage import PreconditionFailedError, S3Store
from tasks.dataset import VERSION_FILE, assign_split
from tasks.erasure import read_erasures
from tasks.ingest import discover_new_batches
from tasks.manifest import read_manifest
from tests.consistency import assert_consistent
from tests.fault_proxy import Request, when
from tests.retrain_process import QUICK  # one epoch: the faults come around ingest and publish

pytestmark = pytest.mark.chaos

MANIFEST = when(method="PUT", key="state/manifest.json", conditional=True)
POINTER = when(method="PUT", key="models/production.json", conditional=True)
HOLD_S = 120


def _version_file(request: Request) -> bool:
    return request.method == "PUT" and request.key.endswith("/" + VERSION_FILE)


def _rewrite_of(key: str) -> Callable[[Request], bool]:
    return when(method="PUT", key=key)  # an erasure's rewrite: the only writes there in these tests


@pytest.fixture
def proxied(run_resources, fault_proxy) -> Resources:
    """The same bucket and settings, reached through the fault proxy."""
    s3 = run_resources.settings.s3.model_copy(update={"endpoint_url": fault_proxy.endpoint_url})
    return Resources(run_resources.settings.model_copy(update={"s3": s3}), S3Store(s3))


@pytest.fixture
def bucket(run_resources) -> dict[str, set[str]]:
    """Batch a.csv ingested (the curated version the manifest names), batch b.csv landed after it."""
    store = run_resources.store
    ids = {}
    for name, count, seed in (("a.csv", 40, 1), ("b.csv", 30, 2)):
        tickets = generate_tickets(count, seed=seed, id_prefix=name[0])
        store.put(f"incoming/{name}", tickets_to_csv(tickets))
        ids[name] = set(tickets["ticket_id"])
        if name == "a.csv":
            ingest_new_batches(run_resources, "run-0")
    return ids


def _outcome(call: Callable[[], object]) -> object:
    """What `call` returned, or the exception it raised."""
    try:
        return call()
    except Exception as error:  # the held operation may lose its race: that is an outcome
        return error


def _interleave(proxy, match, held: Callable[[], object], other: Callable[[], object]) -> tuple:
    """Run `held` (through the proxy) until its request matching `match` arrives, hold that request while
    `other` runs to its end, then let it through; both outcomes."""
    release = threading.Event()
    rule = proxy.delay(match, until=release, seconds=HOLD_S)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_outcome, held)
        assert rule.arrived.wait(HOLD_S), "the request to hold never came"
        done = _outcome(other)
        release.set()
        return pending.result(timeout=HOLD_S * 2), done


def _forget(resources: Resources, *ids: str) -> Callable[[], object]:
    return lambda: forget(list(ids), "dpo@example.com", resources=resources)


def _ingest(resources: Resources, run_id: str) -> Callable[[], object]:
    return lambda: ingest_new_batches(resources, run_id)


def _settled(resources: Resources, expected: set[str]) -> None:
    """The next run ingests what is left; then nothing is left to ingest and the bucket is consistent."""
    ingest_new_batches(resources, "run-after")
    store = resources.store
    assert discover_new_batches(store, read_manifest(store)[0]) == [], "an erasure's rewrite looks new"
    assert assert_consistent(store) == expected


def _one_of(ids: set[str]) -> str:
    return sorted(ids)[0]


# --- a run and an erasure ------------------------------------------------------------------------------


@pytest.mark.parametrize("held_write", ["manifest", "version-file"])
def test_an_erasure_while_a_run_writes_its_version_makes_the_run_discard_it(
    run_resources, proxied, fault_proxy, bucket, held_write
):
    """Issue 35 item 1: the id is only in the run's batch, so the erasure finds it in no committed
    version; before, it committed nothing and deleted the run's version and part as superseded, and the
    run's commit then named a deleted version."""
    x = _one_of(bucket["b.csv"])
    match = MANIFEST if held_write == "manifest" else _version_file

    run, record = _interleave(fault_proxy, match, _ingest(proxied, "run-1"), _forget(run_resources, x))

    assert isinstance(run, PreconditionFailedError) and "discarded" in str(run), run
    assert record.curated.found == [x] and record.curated.incoming_rewritten == ["incoming/b.csv"]
    assert read_manifest(run_resources.store)[0].erasures == 1
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {x})


def test_a_run_that_commits_while_an_erasure_rewrites_withholds_the_ticket_the_erasure_listed_first(
    run_resources, proxied, fault_proxy, bucket
):
    """The run ingests the ticket's batch while the erasure's rewrite of it is held. The erasure added
    the id to the erased-id list before anything else, so the run withholds the ticket's record; the
    erasure's commit loses to the run's and is redone on the run's version, which does not hold it; the
    manifest entry takes the rewritten object's ETag."""
    x = _one_of(bucket["b.csv"])

    record, run = _interleave(
        fault_proxy, _rewrite_of("incoming/b.csv"), _forget(proxied, x), _ingest(run_resources, "run-1")
    )

    assert x not in set(run.curated["ticket_id"])
    assert record.curated.dataset_version_before == run.dataset_version
    assert record.curated.rows_removed == 0 and record.curated.incoming_rewritten == ["incoming/b.csv"]
    entry = read_manifest(run_resources.store)[0].objects["incoming/b.csv"]
    assert entry.etag == run_resources.store.get("incoming/b.csv")[1]
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {x})


def test_a_run_that_commits_while_an_erasure_commits_reads_the_rewritten_batch(
    run_resources, proxied, fault_proxy, bucket
):
    x = _one_of(bucket["b.csv"])

    record, run = _interleave(fault_proxy, MANIFEST, _forget(proxied, x), _ingest(run_resources, "run-1"))

    assert x not in set(run.curated["ticket_id"]) and record.curated.found == [x]
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {x})


def test_a_run_that_commits_while_an_erasure_writes_its_version_is_erased_after_it(
    run_resources, proxied, fault_proxy, bucket
):
    """The erasure's new dataset version file is held (the ticket is in the committed data) while a run
    ingests on top of the old version: the erasure's commit loses and it erases from the run's version."""
    x = _one_of(bucket["a.csv"])

    record, run = _interleave(
        fault_proxy, _version_file, _forget(proxied, x), _ingest(run_resources, "run-1")
    )

    assert x in set(run.curated["ticket_id"]) and record.curated.dataset_version_before == run.dataset_version
    assert record.curated.found == [x] and run.dataset_version in record.datasets_deleted
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {x})


# --- two erasures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("held_write", ["incoming-rewrite", "manifest"])
def test_two_erasures_at_once_erase_both_tickets_and_the_manifest_follows_both_rewrites(
    run_resources, proxied, fault_proxy, bucket, held_write
):
    """Issue 35 item 2: before, the held rewrite (an unconditional put of what it read) brought the other
    erasure's ticket back; and a commit of an older rewrite left the manifest entry at an ETag the object
    no longer had, so the next run ingested the batch again."""
    y, z = sorted(bucket["a.csv"])[:2]
    match = _rewrite_of("incoming/a.csv") if held_write == "incoming-rewrite" else MANIFEST

    first, second = _interleave(fault_proxy, match, _forget(proxied, y), _forget(run_resources, z))

    assert first.curated.found == [y] and second.curated.found == [z], (first, second)
    manifest = read_manifest(run_resources.store)[0]
    entry = manifest.objects["incoming/a.csv"]
    assert entry.etag == run_resources.store.get("incoming/a.csv")[1] and entry.erased_rows == 2
    assert manifest.erasures == 2 and manifest.erasure_rewrites == {}
    assert {record.request_id for record in read_erasures(run_resources.store)} == {
        first.request_id,
        second.request_id,
    }
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {y, z})


# --- two runs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("held_write", ["manifest", "version-file"])
def test_two_runs_at_once_ingest_each_batch_once(run_resources, proxied, fault_proxy, bucket, held_write):
    match = MANIFEST if held_write == "manifest" else _version_file

    held, other = _interleave(fault_proxy, match, _ingest(proxied, "run-1"), _ingest(run_resources, "run-2"))

    assert isinstance(held, PreconditionFailedError), held
    assert set(other.curated["ticket_id"]) == bucket["a.csv"] | bucket["b.csv"]
    _settled(run_resources, bucket["a.csv"] | bucket["b.csv"])


# --- the pointer flip held: full runs ------------------------------------------------------------------


def test_two_runs_flipping_the_pointer_at_once_one_wins_and_the_history_ends_at_it(
    run_resources, proxied, fault_proxy, bucket
):
    held, other = _interleave(
        fault_proxy,
        POINTER,
        lambda: retrain(training=QUICK, resources=proxied),
        lambda: retrain(training=QUICK, resources=run_resources),
    )

    assert other.status == "promoted" and held.status == "lost-race", (held, other)
    assert held.production_version == other.challenger_version
    _settled(run_resources, bucket["a.csv"] | bucket["b.csv"])


def test_an_erasure_while_a_run_flips_the_pointer_names_the_model_trained_on_the_ticket(
    run_resources, proxied, fault_proxy, bucket
):
    x = next(
        ticket_id for ticket_id in sorted(bucket["b.csv"]) if _split_of(run_resources, ticket_id) == "train"
    )

    run, record = _interleave(
        fault_proxy,
        POINTER,
        lambda: retrain(training=QUICK, resources=proxied),
        _forget(run_resources, x),
    )

    assert run.status == "promoted", run
    assert record.trained_on_versions == [run.challenger_version]
    assert (
        record.curated.dataset_version_before == run.dataset_version != record.curated.dataset_version_after
    )
    _settled(run_resources, (bucket["a.csv"] | bucket["b.csv"]) - {x})


def _split_of(resources: Resources, ticket_id: str) -> str:
    settings = resources.settings
    return assign_split(ticket_id, settings.eval_fraction, settings.validation_fraction)
