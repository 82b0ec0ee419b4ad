"""The storage seam against a real SeaweedFS over HTTP."""

import boto3
import pytest
from botocore.exceptions import ClientError

from retrainer.storage import ExpiryRule, ObjectStore, PreconditionFailedError


def test_put_get_and_list_round_trip(store: ObjectStore):
    etag = store.put("incoming/a.csv", b"hello")
    store.put("incoming/b.csv", b"world")
    store.put("other/c.csv", b"!")

    assert store.get("incoming/a.csv") == (b"hello", etag)
    assert [info.key for info in store.list_objects("incoming/")] == ["incoming/a.csv", "incoming/b.csv"]
    assert store.get_if_exists("incoming/missing.csv") is None
    with pytest.raises(KeyError):
        store.get("incoming/missing.csv")


def test_if_none_match_refuses_an_existing_key(store: ObjectStore):
    store.put("models/v1/model.safetensors", b"weights", if_none_match=True)

    with pytest.raises(PreconditionFailedError):
        store.put("models/v1/model.safetensors", b"other weights", if_none_match=True)
    assert store.get("models/v1/model.safetensors")[0] == b"weights"


def test_if_match_writes_only_over_the_expected_etag(store: ObjectStore):
    first = store.put("models/production.json", b"v1")
    second = store.put("models/production.json", b"v2", if_match=first)

    with pytest.raises(PreconditionFailedError):
        store.put("models/production.json", b"v3", if_match=first)  # stale: someone wrote v2
    assert store.get("models/production.json") == (b"v2", second)


def test_upload_dir_never_overwrites(store: ObjectStore, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "x.txt").write_text("x")

    assert store.upload_dir(tmp_path, "models/v1/") == ["models/v1/config.json", "models/v1/sub/x.txt"]
    with pytest.raises(PreconditionFailedError):
        store.upload_dir(tmp_path, "models/v1/")


def test_download_prefix_copies_every_object(store: ObjectStore, tmp_path):
    store.put("models/v1/a.json", b"a")
    store.put("models/v1/deep/b.json", b"b")

    assert store.download_prefix("models/v1/", tmp_path) == 2
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


def test_ensure_bucket_is_idempotent(store: ObjectStore):
    store.ensure_bucket()
    store.put("x", b"1")
    store.ensure_bucket()
    assert store.get("x")[0] == b"1"


def test_only_run_scratch_can_be_deleted_and_all_of_it_is(store):
    store.put("models/v1/model.safetensors", b"weights")
    for n in range(3):
        store.put(f"runs/r1/checkpoints/checkpoint-{n}/optimizer.pt", b"x" * 10)
    store.put("runs/r2/challenger/config.json", b"{}")

    for outside in ("models/", "models/v1/", "runs/", "", "runsx/"):
        with pytest.raises(ValueError, match="only run scratch"):
            store.delete_scratch(outside)
    assert store.delete_scratch("runs/r1/") == (3, 30)

    assert [info.key for info in store.list_objects("")] == [
        "models/v1/model.safetensors",
        "runs/r2/challenger/config.json",
    ]
    assert store.delete_scratch("runs/r1/") == (0, 0)  # idempotent: a retried delete finds nothing


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
