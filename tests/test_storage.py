"""The storage seam's contract, against a real SeaweedFS over HTTP and against the local-directory store
(`retrainer.directory_store`): the tests taking `any_store` (tests/conftest.py) run on both."""

import uuid
from concurrent.futures import ProcessPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError

from retrainer.settings import S3Settings
from retrainer.storage import (
    BucketNotFoundError,
    ExpiryRule,
    LifecycleUnsupportedError,
    ObjectStore,
    PreconditionFailedError,
    open_store,
)


def _put_if_absent(settings: S3Settings, key: str, body: bytes) -> bool:
    """In another process: create `key` unless it exists; True when this process's write won."""
    try:
        open_store(settings).put(key, body, if_none_match=True)
    except PreconditionFailedError:
        return False
    return True


def _move_pointer(settings: S3Settings, key: str, expected_etag: str, body: bytes) -> bool:
    """In another process: replace `key` only if it still has `expected_etag`; True when it did."""
    try:
        open_store(settings).put(key, body, if_match=expected_etag)
    except PreconditionFailedError:
        return False
    return True


def test_of_processes_racing_to_create_a_key_or_move_a_pointer_exactly_one_wins(any_store: ObjectStore):
    contenders = 6
    with ProcessPoolExecutor(contenders) as pool:
        created = list(
            pool.map(
                _put_if_absent,
                [any_store.settings] * contenders,
                ["models/v9/x"] * contenders,
                [f"writer {n}".encode() for n in range(contenders)],
            )
        )
        first = any_store.put("models/production.json", b"v1")
        moved = list(
            pool.map(
                _move_pointer,
                [any_store.settings] * contenders,
                ["models/production.json"] * contenders,
                [first] * contenders,
                [f"v2 by {n}".encode() for n in range(contenders)],
            )
        )

    assert sum(created) == 1 and any_store.get("models/v9/x")[0] == f"writer {created.index(True)}".encode()
    assert (
        sum(moved) == 1
        and any_store.get("models/production.json")[0] == f"v2 by {moved.index(True)}".encode()
    )


def test_etags_follow_the_content_and_listings_give_keys_sizes_and_folders(any_store: ObjectStore):
    same = [any_store.put(key, b"same bytes") for key in ("a/1", "a/2")]
    any_store.put("a/deep/3", b"12345")
    any_store.put("a", b"a key and a folder of one name")
    any_store.put("b/4", b"")

    assert same[0] == same[1] != any_store.put("a/2", b"other bytes")
    listed = {info.key: (info.etag, info.size) for info in any_store.list_objects("a/")}
    assert listed == {
        "a/1": (same[0], 10),
        "a/2": (any_store.get("a/2")[1], 11),
        "a/deep/3": (any_store.get("a/deep/3")[1], 5),
    }
    assert [info.key for info in any_store.list_objects("a")] == ["a", "a/1", "a/2", "a/deep/3"]
    assert any_store.list_folders("") == ["a/", "b/"]
    assert any_store.list_folders("a/") == ["a/deep/"]
    assert any_store.list_objects("nothing/") == [] and any_store.list_folders("nothing/") == []


def test_tags_belong_to_one_object_and_a_new_write_clears_them(any_store: ObjectStore):
    any_store.put("datasets/v1/curated.parquet", b"rows")
    any_store.put("datasets/v2/curated.parquet", b"rows")

    any_store.tag("datasets/v1/curated.parquet", "ticket-retrainer", "superseded")

    assert any_store.tags("datasets/v1/curated.parquet") == {"ticket-retrainer": "superseded"}
    assert any_store.tags("datasets/v2/curated.parquet") == {}
    any_store.put("datasets/v1/curated.parquet", b"rows again")
    assert any_store.tags("datasets/v1/curated.parquet") == {}


def test_delete_removes_one_object_and_is_idempotent(any_store: ObjectStore):
    any_store.put("quarantine/r1/batch.csv", b"x")
    any_store.put("quarantine/r1/other.csv", b"y")

    any_store.delete("quarantine/r1/batch.csv")
    any_store.delete("quarantine/r1/batch.csv")

    assert [info.key for info in any_store.list_objects("quarantine/")] == ["quarantine/r1/other.csv"]
    with pytest.raises(KeyError):
        any_store.get("quarantine/r1/batch.csv")


def test_a_missing_bucket_is_named_not_created(any_store: ObjectStore):
    missing = open_store(any_store.settings.model_copy(update={"bucket": f"missing-{uuid.uuid4().hex[:12]}"}))

    with pytest.raises(BucketNotFoundError, match="does not exist"):
        missing.require_bucket()


def test_the_directory_store_keeps_keys_inside_its_bucket_and_has_no_lifecycle_rules(tmp_path):
    store = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="local"))
    store.ensure_bucket()

    for bad in ("../escape", "a/../../b", "/abs", "a//b", "", "x.~object/y"):
        with pytest.raises(ValueError, match="cannot be stored"):
            store.put(bad, b"1")
    with pytest.raises(LifecycleUnsupportedError, match="runs/: 14 days"):
        store.apply_expiry_rules([ExpiryRule("expire-runs", "runs/", 14)])
    assert not list((tmp_path.parent).glob("escape*"))


def test_put_get_and_list_round_trip(any_store: ObjectStore):
    etag = any_store.put("incoming/a.csv", b"hello")
    any_store.put("incoming/b.csv", b"world")
    any_store.put("other/c.csv", b"!")

    assert any_store.get("incoming/a.csv") == (b"hello", etag)
    assert [info.key for info in any_store.list_objects("incoming/")] == ["incoming/a.csv", "incoming/b.csv"]
    assert any_store.get_if_exists("incoming/missing.csv") is None
    with pytest.raises(KeyError):
        any_store.get("incoming/missing.csv")


def test_if_none_match_refuses_an_existing_key(any_store: ObjectStore):
    any_store.put("models/v1/model.safetensors", b"weights", if_none_match=True)

    with pytest.raises(PreconditionFailedError):
        any_store.put("models/v1/model.safetensors", b"other weights", if_none_match=True)
    assert any_store.get("models/v1/model.safetensors")[0] == b"weights"


def test_if_match_writes_only_over_the_expected_etag(any_store: ObjectStore):
    first = any_store.put("models/production.json", b"v1")
    second = any_store.put("models/production.json", b"v2", if_match=first)

    with pytest.raises(PreconditionFailedError):
        any_store.put("models/production.json", b"v3", if_match=first)  # stale: someone wrote v2
    assert any_store.get("models/production.json") == (b"v2", second)


def test_upload_dir_never_overwrites(any_store: ObjectStore, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "x.txt").write_text("x")

    assert any_store.upload_dir(tmp_path, "models/v1/") == ["models/v1/config.json", "models/v1/sub/x.txt"]
    with pytest.raises(PreconditionFailedError):
        any_store.upload_dir(tmp_path, "models/v1/")


def test_download_prefix_copies_every_object(any_store: ObjectStore, tmp_path):
    any_store.put("models/v1/a.json", b"a")
    any_store.put("models/v1/deep/b.json", b"b")

    assert any_store.download_prefix("models/v1/", tmp_path) == 2
    assert (tmp_path / "deep" / "b.json").read_bytes() == b"b"


def test_seaweedfs_enforces_credentials(local_s3, store: ObjectStore):
    intruder = boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="retrainer-test",
        aws_secret_access_key="wrong-secret",
    )
    with pytest.raises(ClientError) as refused:
        intruder.list_objects_v2(Bucket=store.bucket)
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_ensure_bucket_is_idempotent(any_store: ObjectStore):
    any_store.ensure_bucket()
    any_store.put("x", b"1")
    any_store.ensure_bucket()
    assert any_store.get("x")[0] == b"1"


def test_only_run_scratch_can_be_deleted_and_all_of_it_is(any_store: ObjectStore):
    any_store.put("models/v1/model.safetensors", b"weights")
    for n in range(3):
        any_store.put(f"runs/r1/checkpoints/checkpoint-{n}/optimizer.pt", b"x" * 10)
    any_store.put("runs/r2/challenger/config.json", b"{}")

    for outside in ("models/", "models/v1/", "runs/", "", "runsx/"):
        with pytest.raises(ValueError, match="only run scratch"):
            any_store.delete_scratch(outside)
    assert any_store.delete_scratch("runs/r1/") == (3, 30)

    assert [info.key for info in any_store.list_objects("")] == [
        "models/v1/model.safetensors",
        "runs/r2/challenger/config.json",
    ]
    assert any_store.delete_scratch("runs/r1/") == (0, 0)  # idempotent: a retried delete finds nothing


def test_the_run_scratch_expiry_rule_is_set_once_and_keeps_the_buckets_other_rules(store):
    other = {
        "ID": "operators-own",
        "Filter": {"Prefix": "exports/"},
        "Status": "Enabled",
        "Expiration": {"Days": 3},
    }
    store._client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration={"Rules": [other]}
    )

    store.apply_expiry_rules([ExpiryRule("expire-runs", "runs/", 30)])
    store.apply_expiry_rules([ExpiryRule("expire-runs", "runs/", 14)])  # a changed setting replaces the rule

    rules = store._client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert set(by_id) == {"operators-own", "ticket-retrainer-expire-runs"}
    assert by_id["ticket-retrainer-expire-runs"]["Expiration"] == {"Days": 14}
    assert by_id["ticket-retrainer-expire-runs"]["Filter"] == {"Prefix": "runs/"}
    assert by_id["operators-own"]["Expiration"] == {"Days": 3}
