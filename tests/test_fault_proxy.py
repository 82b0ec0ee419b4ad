"""The fault proxy (tests/fault_proxy.py) the interleaving and lost-response tests stand on: it forwards
signed requests unchanged, and each fault does what it says, against a real SeaweedFS."""

import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from retrainer.storage import ObjectStore
from tests.fault_proxy import when

pytestmark = pytest.mark.s3


def _one_shot_client(endpoint_url: str, read_timeout: float = 30):
    """A raw client that tries once, so each fault reaches the test as the proxy made it."""
    config = Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout, connect_timeout=5)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", config=config)


def test_requests_pass_through_signed_and_are_recorded(proxied_store: ObjectStore, fault_proxy):
    etag = proxied_store.put("a/b c.txt", b"x" * 2_000_000, if_none_match=True)  # large: Expect 100

    assert proxied_store.get("a/b c.txt") == (b"x" * 2_000_000, etag)
    assert [info.key for info in proxied_store.list_objects("a/")] == ["a/b c.txt"]
    [put] = fault_proxy.seen(when(method="PUT", key="a/b c.txt"))
    assert put.outcome == 200 and put.request.conditional and put.request.bucket == proxied_store.bucket


def test_fail_answers_without_forwarding_and_the_client_retries(proxied_store, fault_proxy, store):
    rule = fault_proxy.fail(when(method="PUT"), times=2)

    proxied_store.put("k", b"v")  # standard retry mode rides out two 503 SlowDown

    assert rule.hits == 2
    assert [seen.outcome for seen in fault_proxy.seen(when(method="PUT"))] == ["failed", "failed", 200]
    assert store.get("k")[0] == b"v"
    fault_proxy.fail(when(method="GET"), times=None, status=500, code="InternalError")
    with pytest.raises(ClientError, match="InternalError"):
        _one_shot_client(fault_proxy.endpoint_url).get_object(Bucket=store.bucket, Key="k")


def test_drop_response_lets_the_write_land_and_loses_the_answer(store, fault_proxy):
    fault_proxy.drop_response(when(method="PUT", key="pointer"))

    with pytest.raises(ConnectionClosedError):
        _one_shot_client(fault_proxy.endpoint_url).put_object(Bucket=store.bucket, Key="pointer", Body=b"v2")

    assert store.get("pointer")[0] == b"v2"
    assert [seen.outcome for seen in fault_proxy.seen(when(key="pointer"))] == ["dropped"]


def test_delay_holds_a_request_until_released(proxied_store, fault_proxy, store):
    release = threading.Event()
    rule = fault_proxy.delay(when(method="PUT", key="manifest"), until=release)
    writer = threading.Thread(target=proxied_store.put, args=("manifest", b"m"))
    writer.start()

    assert rule.arrived.wait(30)
    time.sleep(0.3)
    assert store.get_if_exists("manifest") is None  # held: not yet forwarded
    release.set()
    writer.join(30)
    assert store.get("manifest")[0] == b"m"


def test_hang_never_answers_so_only_a_read_timeout_ends_the_wait(store, fault_proxy):
    fault_proxy.hang(when(method="GET"))
    client = _one_shot_client(fault_proxy.endpoint_url, read_timeout=1)

    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.get_object(Bucket=store.bucket, Key="anything")
    assert time.monotonic() - started < 10
    fault_proxy.wait_for(when(method="GET"), timeout_s=1)
    with pytest.raises(TimeoutError):
        fault_proxy.wait_for(when(method="DELETE"), timeout_s=0.2)
