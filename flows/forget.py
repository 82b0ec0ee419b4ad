"""The ``forget`` flow: erase tickets, by id, on request, and record the request.

It only wires tasks; the work lives in ``tasks/erasure.py``. The order matters: the models' exposure is
read before the superseded dataset versions it reads are deleted, and the request is recorded last,
naming everything the steps changed.
"""

from prefect import flow
from prefect.runtime import flow_run

from retrainer.resources import Resources
from tasks.common import run_logger
from tasks.erasure import (
    ErasureRecord,
    add_erased_ids_task,
    delete_superseded_datasets_task,
    erase_curated_and_incoming_task,
    erase_from_quarantine_task,
    erasure_record,
    new_request,
    published_exposure_task,
    record_erasure_task,
)
from tasks.id_index import compact_index_task, whereabouts_task
from tasks.known_predictions import erase_from_predictions_task


@flow(name="forget")
def forget(
    ticket_ids: list[str], requested_by: str, note: str = "", resources: Resources | None = None
) -> ErasureRecord:
    """Erase the tickets `ticket_ids` from the curated data, ``incoming/``, the quarantine and the models'
    stored predictions; report the published model versions trained or evaluated on them; record the
    request in ``state/erasure/``.

    Args:
        ticket_ids: the ids to forget (ids only: no ticket text is needed or recorded).
        requested_by: who asked (recorded).
        note: why, or the request's reference (recorded).
        resources: settings and store, passed by in-process callers (tests, notebooks); empty (a
            deployment run, `retrainer forget`): read from the environment when the run starts.

    The next nightly run trains on the new dataset version, without the tickets. Asking again is
    harmless: the second request finds nothing and records that.
    """
    request = new_request(ticket_ids, requested_by, note, str(flow_run.id) if flow_run.id else None)
    resources = resources or Resources.from_environment()
    store, ids = resources.store, request["ticket_ids"]
    store.require_bucket()
    add_erased_ids_task(store, ids)  # first: nightly runs withhold the tickets from now on
    where = whereabouts_task(store, ids)  # the id index: only objects that may hold an id are read
    curated = erase_curated_and_incoming_task(
        store, ids, resources.settings.ingest, request_id=request["request_id"], where=where
    )
    quarantine = erase_from_quarantine_task(store, ids, resources.settings.ingest, where)
    models = published_exposure_task(store, ids, where)  # before their superseded datasets are deleted
    # Only what was listed before the erasure's manifest commit: a version written since may be named
    # by a run's commit still to come (tasks/erasure.py, erase_curated_and_incoming).
    datasets = delete_superseded_datasets_task(
        store, ids, curated.dataset_version_after, curated.existing, where
    )
    predictions = erase_from_predictions_task(store, ids)
    record = record_erasure_task(
        store, erasure_record(request, curated, quarantine, models, datasets, predictions)
    )
    for line in record.summary():
        run_logger().info("%s", line)
    compacted = compact_index_task(resources.store, return_state=True)  # last: the erasure is recorded
    if compacted.is_failed():
        run_logger().warning("the id index was not compacted (the next request will): %s", compacted.message)
    return record
