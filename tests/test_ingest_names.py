"""One poisonous object name never stops ingestion: a name too long for the quarantine keys built from it,
a name that is not UTF-8, a name that clashes with the folder store's own suffixes. The good batches beside
it are curated, the bad object is named in one line (quarantined and alerted as any bad batch), and an
error that can never succeed is not retried. Through the ingest step (and the flow) against SeaweedFS over
HTTP and the folder store."""

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import failed_record, ingest_new_batches, retrain
from retrainer.core.validation import ValidationFailedError, validation_failure
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import InvalidKeyError, open_store
from tasks.common import read_task
from tasks.manifest import read_manifest
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

RETRIES_S = 21  # what the read tasks' retries would add (1 + 5 + 15 s)
GOOD = generate_tickets(12, seed=1, id_prefix="good")
LONG_NAME = "n" * 240 + ".csv"  # a 244-character file name: the object fits, "<name>.errors.json" does not


def _with_a_bad_row(seed: int) -> bytes:
    tickets = generate_tickets(12, seed=seed, id_prefix=f"bad{seed}")
    tickets.loc[0, "label"] = "no-such-label"
    return tickets_to_csv(tickets)


def _resources(store, tmp_path: Path) -> Resources:
    return Resources(RetrainerSettings(s3=store.settings, work_dir=tmp_path / "work"), store)


def _ingest(resources: Resources, run_id: str = "run-1"):
    started = time.monotonic()
    ingestion = ingest_new_batches(resources, run_id)
    return ingestion, time.monotonic() - started


def _good_rows_curated(ingestion) -> None:
    assert set(GOOD["ticket_id"]) <= set(ingestion.curated["ticket_id"])


def _quarantine_report(store, run_id: str, source_key: str) -> dict:
    """The errors file that names `source_key` (whatever key the quarantine gave it)."""
    reports = [
        json.loads(store.get(info.key)[0])
        for info in store.list_objects(f"quarantine/{run_id}/")
        if info.key.endswith(".errors.json")
    ]
    return next(report for report in reports if report["source_key"] == source_key)


@pytest.fixture
def ingest_store(any_store, prefect_api, tmp_path):
    """A fresh bucket on SeaweedFS or in a folder, and the resources an ingest step is given."""
    return any_store, _resources(any_store, tmp_path)


def test_a_name_too_long_for_its_quarantine_keys_is_quarantined_under_a_bounded_key(ingest_store):
    store, resources = ingest_store
    store.put("incoming/good.csv", tickets_to_csv(GOOD))
    long_key = "incoming/" + LONG_NAME
    store.put(long_key, _with_a_bad_row(2))

    ingestion, took = _ingest(resources)

    _good_rows_curated(ingestion)
    assert {"bad2-2-000001", "bad2-2-000002"} <= set(ingestion.curated["ticket_id"])  # its good rows too
    report = _quarantine_report(store, "run-1", long_key)
    assert len(report["problems"]) == 1 and "no-such-label" in report["problems"][0]
    assert all(len(info.key.rsplit("/", 1)[1]) <= 200 for info in store.list_objects("quarantine/"))
    assert long_key in read_manifest(store)[0].objects
    assert took < RETRIES_S


def test_an_unreadable_file_with_a_long_name_fails_the_run_naming_it_after_the_good_batch_is_curated(
    flow_store_env, prefect_api
):
    store = flow_store_env
    store.put("incoming/good.csv", tickets_to_csv(GOOD))
    long_key = "incoming/" + LONG_NAME
    store.put(long_key, b"PK\x03\x04 not a CSV")

    with pytest.raises(ValidationFailedError) as raised:
        retrain()

    message = failed_record(raised.value).reasons[-1]
    assert long_key in message and "zip archive" in message
    manifest = read_manifest(store)[0]
    assert manifest.objects["incoming/good.csv"].accepted == len(GOOD)
    assert manifest.objects[long_key].accepted == 0


@pytest.mark.s3
def test_a_name_that_is_not_utf8_on_seaweedfs_is_ingested_and_quarantined_under_a_safe_key(
    store, prefect_api, tmp_path
):
    store.put("incoming/good.csv", tickets_to_csv(GOOD))
    _put_raw(store, "incoming/%FFbad.csv", _with_a_bad_row(3))  # a client that sends the raw byte
    [bad_key] = [info.key for info in store.list_objects("incoming/") if "bad" in info.key]
    assert bad_key == "incoming/\ufffdbad.csv"  # SeaweedFS keeps and lists the byte as U+FFFD

    ingestion, took = _ingest(_resources(store, tmp_path))

    _good_rows_curated(ingestion)
    report = _quarantine_report(store, "run-1", bad_key)
    assert len(report["problems"]) == 1
    assert not [info.key for info in store.list_objects("quarantine/") if "\ufffd" in info.key]
    assert took < RETRIES_S


def _folder_store(tmp_path: Path):
    store = open_store(S3Settings(endpoint_url=(tmp_path / "objects").as_uri(), bucket="names"))
    store.ensure_bucket()
    return store


def _drop_file(store, relative: bytes, data: bytes) -> None:
    """An object file put in the folder by hand (a producer copying files), bypassing the store's checks."""
    header = json.dumps({"etag": f'"{uuid.uuid4().hex}"', "size": len(data), "content_type": "text/csv"})
    path = bytes(store.bucket_dir) + b"/" + relative + b".~object"
    Path(path.decode(errors="surrogateescape")).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(header.encode() + b"\n" + data)


@pytest.mark.parametrize(
    ("relative", "shown", "reason"),
    [
        (b"incoming/\xffbad.csv", "incoming/\\xffbad.csv", "not valid UTF-8"),
        (b"incoming/notes.~object/bad.csv", "incoming/notes.~object/bad.csv", "cannot be stored"),
    ],
    ids=["not-utf8", "store-suffix"],
)
def test_a_name_the_folder_store_cannot_read_is_rejected_alone_and_named(
    tmp_path, prefect_api, relative, shown, reason
):
    store = _folder_store(tmp_path)
    store.put("incoming/good.csv", tickets_to_csv(GOOD))
    _drop_file(store, relative, tickets_to_csv(generate_tickets(12, seed=4, id_prefix="bad")))
    resources = _resources(store, tmp_path)

    ingestion, took = _ingest(resources)

    _good_rows_curated(ingestion)
    failure = validation_failure(ingestion.validated)
    assert failure is not None and shown in failure and reason in failure, failure
    assert _quarantine_report(store, "run-1", shown)["source_key"] == shown
    assert took < RETRIES_S
    # recorded: the next night neither alerts again nor fails
    again, _ = _ingest(resources, "run-2")
    assert again.validated == []


def _put_raw(store, quoted_key: str, body: bytes) -> None:
    """PUT `body` at the already-quoted `quoted_key`: boto3 would encode a str key as UTF-8 first."""
    url = f"{store.endpoint}/{store.bucket}/{quoted_key}"
    request = AWSRequest(
        method="PUT", url=url, data=body, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    )
    SigV4Auth(Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY), "s3", "us-east-1").add_auth(request)
    with urllib.request.urlopen(
        urllib.request.Request(url, body, dict(request.headers), method="PUT")
    ) as answer:
        assert answer.status == 200


def test_a_key_the_store_cannot_hold_is_not_retried(prefect_api):
    calls = []

    def refused() -> None:
        calls.append(1)
        raise InvalidKeyError("key 'x.~object' cannot be stored in the local directory store")

    with pytest.raises(InvalidKeyError):
        read_task(refused, "refused")()
    assert calls == [1]  # a transient failure would be tried 4 times (1 + 5 + 15 s apart)
