"""The local SeaweedFS helper: loopback only, stopped by its own PID."""

import psutil
import pytest

from retrainer.seaweed import LocalS3

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
