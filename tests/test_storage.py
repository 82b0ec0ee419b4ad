"""The storage seam's contract (`retrainer.storage.contract`), against a real SeaweedFS over HTTP (`S3Store`)
and against the local-folder store (`FolderStore`): the tests taking `any_store` (tests/conftest.py) run on
both."""

import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError

import tasks.registry  # noqa: F401  (imported here: the silent-store test times the store, not imports)
from app import cli
from retrainer.settings import CLI_ENVIRONMENT_DEFAULTS, S3Settings
from retrainer.storage import (
    BucketNotFoundError,
    ExpiryRule,
    FolderStore,
    InvalidKeyError,
    LifecycleUnsupportedError,
    ObjectStore,
    PreconditionFailedError,
    S3Store,
    StorageError,
    open_store,
)
from tests.fault_proxy import when


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


def test_a_conditional_read_returns_nothing_while_the_etag_is_unchanged(any_store: ObjectStore):
    first = any_store.put("models/production.json", b"v1")

    assert any_store.get_if_changed("models/production.json", None) == (b"v1", first)
    assert any_store.get_if_changed("models/production.json", first) is None
    second = any_store.put("models/production.json", b"v2")
    assert any_store.get_if_changed("models/production.json", first) == (b"v2", second)
    assert any_store.get_if_changed("models/production.json", second) is None
    with pytest.raises(KeyError):
        any_store.get_if_changed("models/missing.json", first)


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


def test_the_folder_store_keeps_keys_inside_its_bucket_and_has_no_lifecycle_rules(tmp_path):
    store = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="local"))
    store.ensure_bucket()

    for bad in ("../escape", "a/../../b", "/abs", "a//b", "", "x.~object/y"):
        with pytest.raises(InvalidKeyError, match="cannot be stored"):
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


# -- conditional writes that know their own success (issue 35, item 3) ---------------------------------


@pytest.mark.parametrize("condition", ["if_none_match", "if_match"])
def test_a_conditional_write_whose_answer_was_lost_reports_its_success(proxied_store, fault_proxy, condition):
    earlier = proxied_store.put("models/production.json", b"v1") if condition == "if_match" else None
    conditions = {"if_match": earlier} if earlier else {"if_none_match": True}
    fault_proxy.drop_response(when(method="PUT", key="models/production.json"))

    etag = proxied_store.put("models/production.json", b"v2", **conditions)

    # the first attempt wrote and lost its answer; botocore's retry was refused (412) by that very write
    outcomes = [seen.outcome for seen in fault_proxy.seen(when(method="PUT", key="models/production.json"))]
    assert outcomes[-2:] == ["dropped", 412]
    assert proxied_store.get("models/production.json") == (b"v2", etag)


def test_a_lost_answer_to_a_lost_race_is_still_a_lost_race(proxied_store, fault_proxy, store):
    store.put("models/production.json", b"the other run's pointer")
    fault_proxy.drop_response(when(method="PUT", key="models/production.json"))

    with pytest.raises(PreconditionFailedError):
        proxied_store.put("models/production.json", b"mine", if_none_match=True)
    assert store.get("models/production.json")[0] == b"the other run's pointer"


def test_a_conditional_write_that_never_landed_fails_naming_the_object(store, fault_proxy):
    settings = store.settings.model_copy(
        update={"endpoint_url": fault_proxy.endpoint_url, "max_attempts": 2, "retry_deadline_s": 5}
    )
    fault_proxy.fail(when(method="PUT"), times=None, status=500, code="InternalError")

    with pytest.raises(StorageError, match=r"conditional write to s3://.*/state/manifest.json failed"):
        S3Store(settings).put("state/manifest.json", b"m", if_none_match=True)
    assert store.get_if_exists("state/manifest.json") is None


def test_the_folder_store_reads_back_a_write_whose_clean_up_failed(tmp_path):
    store = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="local"))
    store.ensure_bucket()
    (store.bucket_dir / "state" / "manifest.json.~tags" / "x").mkdir(parents=True)  # unlink() fails

    etag = store.put("state/manifest.json", b"m", if_none_match=True)

    assert store.get("state/manifest.json") == (b"m", etag)


# -- a bounded wait on a silent store, retries that ride out a restart (issue 35, items 10 and 13) -----


def test_models_list_on_a_store_that_never_answers_fails_in_bounded_time_naming_it(
    store, fault_proxy, monkeypatch, capsys, tmp_path
):
    for name, value in {
        **{name: os.environ.get(name, value) for name, value in CLI_ENVIRONMENT_DEFAULTS.items()},
        "RETRAINER_S3__ENDPOINT_URL": fault_proxy.endpoint_url,
        "RETRAINER_S3__BUCKET": store.bucket,
        "RETRAINER_S3__READ_TIMEOUT_S": "1",
        "RETRAINER_S3__RETRY_DEADLINE_S": "3",
        "RETRAINER_WORK_DIR": str(tmp_path / "work"),
    }.items():
        monkeypatch.setenv(name, value)  # main() sets CLI defaults in os.environ: undone after the test
    fault_proxy.hang(when(), times=None)  # accepts every connection, never answers

    started = time.monotonic()
    code = cli.main(["models", "list"])

    took = time.monotonic() - started
    # retried, then stopped at the 3 s deadline plus one attempt's 1 s (and a loaded machine's slack);
    # botocore's default read timeout alone is 60 s an attempt
    assert 2.0 < took < 15, took
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and line.startswith("retrainer: error: ") and fault_proxy.endpoint_url in line, line
    assert "timeout" in line.lower() and len(fault_proxy.seen()) >= 2


def test_retries_back_off_long_enough_to_ride_out_seconds_of_server_errors(proxied_store, fault_proxy):
    started = time.monotonic()
    fault_proxy.fail(when(method="GET"), times=5, status=503, code="ServiceUnavailable")

    assert proxied_store.get_if_exists("nothing") is None  # the sixth attempt got the real answer

    # botocore's own back-off for a 5xx is spent in ~1.5 s; ours waits 0.25-0.5, 0.5-1, 1-2, 2-4, 4-8 s
    assert time.monotonic() - started > 7.5
    assert [seen.outcome for seen in fault_proxy.seen(when(method="GET"))][-1] == 404


# -- the folder store never follows a symbolic link (issue 35, item 6) --------------------------------


def _folder_store(tmp_path):
    store = open_store(S3Settings(endpoint_url=(tmp_path / "objects").as_uri(), bucket="local"))
    store.ensure_bucket()
    return store


def test_the_folder_store_never_reads_lists_or_writes_through_a_symbolic_link(tmp_path):
    store = _folder_store(tmp_path)
    outside = tmp_path / "outside"
    (outside / "quarantine").mkdir(parents=True)
    (outside / "secret.csv.~object").write_bytes(b'{"etag": "\\"x\\"", "size": 3}\nabc')
    store.put("incoming/good.csv", b"good")
    os.symlink(outside / "secret.csv.~object", store.bucket_dir / "incoming" / "linked.csv.~object")
    os.symlink(outside, store.bucket_dir / "incoming" / "folder")
    os.symlink(outside / "quarantine", store.bucket_dir / "quarantine")

    assert [info.key for info in store.list_objects("")] == ["incoming/good.csv"]
    assert store.list_objects("quarantine/") == [] and store.list_objects("incoming/folder/") == []
    assert store.list_folders("") == ["incoming/"]
    for key in ("incoming/linked.csv", "incoming/folder/secret.csv"):
        with pytest.raises(InvalidKeyError, match=f"key '{key}' .* symbolic link"):
            store.get(key)
    with pytest.raises(InvalidKeyError, match=r"key 'quarantine/run-1/bad\.csv' .* symbolic link"):
        store.put("quarantine/run-1/bad.csv", b"rows", if_none_match=True)
    with pytest.raises(InvalidKeyError):
        store.delete("incoming/folder/secret.csv")
    assert sorted(p.name for p in outside.rglob("*")) == ["quarantine", "secret.csv.~object"]


@pytest.mark.parametrize(
    "key", ["incoming/a.~object", "incoming/a.~tags", "incoming/x.~tags/a.csv", ".~store/x"]
)
def test_a_key_that_clashes_with_the_folder_stores_own_names_is_refused_naming_it(tmp_path, key):
    store = _folder_store(tmp_path)

    for operation in (lambda: store.put(key, b"1"), lambda: store.get(key), lambda: store.delete(key)):
        with pytest.raises(InvalidKeyError, match=f"key '{key}' cannot be stored .* the store's"):
            operation()
    assert store.list_objects("") == []


# -- the contract is explicit: two sibling stores (issue 36, item 2) ----------------------------------


def test_both_stores_implement_every_primitive_of_the_contract_themselves():
    primitives = ObjectStore.__abstractmethods__

    assert {"get", "delete", "list_folders", "_iter_objects", "_write", "_ambiguous"} <= primitives
    for store in (S3Store, FolderStore):
        assert store.__bases__ == (ObjectStore,), store  # siblings: neither inherits the other's code
        assert not store.__abstractmethods__
        assert sorted(primitives - vars(store).keys()) == [], store
    with pytest.raises(TypeError, match="abstract"):
        ObjectStore(S3Settings(bucket="abstract"))


def test_open_store_picks_the_store_by_the_endpoints_scheme(tmp_path):
    local = open_store(S3Settings(endpoint_url=tmp_path.as_uri(), bucket="local"))
    remote = open_store(
        S3Settings(endpoint_url="http://127.0.0.1:9", bucket="remote"), credentials=("k", "s")
    )

    assert type(local) is FolderStore and local.bucket_dir == tmp_path / "local"
    assert type(remote) is S3Store and remote.endpoint == "http://127.0.0.1:9"
    assert local.uri("a/b") == "s3://local/a/b" and remote.uri("a/b") == "s3://remote/a/b"


def test_a_rewrite_changes_an_object_and_redoes_its_change_when_another_writer_came_between(
    any_store: ObjectStore,
):
    any_store.put("rewrite/log.txt", b"a")
    calls: list[bytes] = []

    def append_b(current: bytes) -> bytes | None:
        calls.append(current)
        if len(calls) == 1:  # another writer replaces the object between this read and the write
            any_store.put("rewrite/log.txt", current + b"x")
        return None if current.endswith(b"b") else current + b"b"

    assert any_store.rewrite("rewrite/log.txt", append_b) is True
    assert any_store.get("rewrite/log.txt")[0] == b"axb"  # the change made again on the newer bytes
    assert calls == [b"a", b"ax"]
    assert any_store.rewrite("rewrite/log.txt", append_b) is False  # nothing to change
    assert any_store.rewrite("rewrite/missing.txt", append_b) is False


def test_delete_many_removes_every_key_across_batches_and_ignores_missing_ones(any_store: ObjectStore):
    keys = [f"many/{n:04d}" for n in range(1005)]  # over S3's 1,000 keys a request
    for key in keys[:3] + keys[-3:]:
        any_store.put(key, b"x")
    kept = "many-kept/object"
    any_store.put(kept, b"y")

    any_store.delete_many(keys)

    assert any_store.list_objects("many/") == []
    assert any_store.get(kept)[0] == b"y"
    any_store.delete_many([])  # nothing to do
