"""The local SeaweedFS helper: loopback only, stopped by its own PID."""

import psutil
import pytest

from app.seaweed import LocalS3
from retrainer.settings import S3Settings
from retrainer.storage import S3Store

pytestmark = pytest.mark.s3


def test_local_s3_binds_loopback_and_stops_by_pid(tmp_path):
    server = LocalS3(tmp_path / "data", "k", "s", tmp_path / "weed.log").start()
    pid = server.process.pid
    try:
        listening = {conn.laddr for conn in psutil.Process(pid).net_connections() if conn.status == "LISTEN"}
        assert listening, "weed mini listens on nothing"
        assert {address.ip for address in listening} == {"127.0.0.1"}
        assert server.ports["s3.port"] in {address.port for address in listening}
    finally:
        server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_restarted_server_serves_its_data_at_once(tmp_path):
    """`start` returns once the data path works (a write read back), not when the port first answers:
    right after a restart, an object written before reads back and a new write lands, with no retry."""
    server = LocalS3(tmp_path / "data", "k", "s", tmp_path / "weed.log").start()
    settings = S3Settings(endpoint_url=server.endpoint_url, bucket="restarts", max_attempts=1)
    try:
        S3Store(settings, credentials=("k", "s")).ensure_bucket()
        for round_ in range(3):
            S3Store(settings, credentials=("k", "s")).put(f"before-{round_}", b"kept")
            server.kill()
            server.start()
            store = S3Store(settings, credentials=("k", "s"))
            assert store.get(f"before-{round_}")[0] == b"kept"
            store.put(f"after-{round_}", b"new", if_none_match=True)
    finally:
        server.stop()
