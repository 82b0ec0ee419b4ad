"""The shipped automations on a real `prefect server start`: a failed validation and a failed run
each reach a real HTTP receiver on 127.0.0.1."""

import subprocess
import sys
import time

import pytest

from app.samples import generate_tickets, tickets_to_csv
from tests.http_receiver import Receiver
from tests.prefect_server import PrefectServer

CREATE_BLOCK = """
import sys
from prefect.blocks.notifications import CustomWebhookNotificationBlock
CustomWebhookNotificationBlock(
    name="retrainer", url=sys.argv[1], allow_private_urls=True,
    json_data={"subject": "{{subject}}", "text": "{{body}}"},
).save("ops-alerts", overwrite=True)
"""


pytestmark = pytest.mark.prefect  # a `prefect server start` of its own


def _run(env, *args, timeout=600):
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    with PrefectServer(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


def test_validation_failure_and_failed_run_reach_the_receiver_through_automations(
    prefect_server, flow_store_env, retrain_env, tmp_path
):
    flow_store_env.put("incoming/good.csv", tickets_to_csv(generate_tickets(60, seed=1)))
    flow_store_env.put("incoming/bad.csv", b"ticket_id,label\nB-1,bug\n")
    env = prefect_server.environment()
    with Receiver() as receiver:
        created = _run(env, "-c", CREATE_BLOCK, receiver.url)
        assert created.returncode == 0, created.stderr
        for _ in range(2):  # applying twice must not duplicate anything
            applied = _run(env, "-m", "app.cli", "alerts", "apply", "--block", "custom-webhook/ops-alerts")
            assert applied.returncode == 0, applied.stderr

        run = _run(env, "-m", "app.cli", "run")
        assert run.returncode != 0 and "missing required column(s) text" in run.stderr

        deadline = time.monotonic() + 60
        while len(receiver.payloads) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # a duplicate from a doubly applied automation would arrive now

    subjects = sorted(payload["subject"] for payload in receiver.payloads)
    assert len(subjects) == 2, receiver.payloads
    assert subjects[0].startswith("ticket-retrainer: flow run ") and subjects[0].endswith(" Failed")
    assert subjects[1] == "ticket-retrainer: validation failed for incoming/bad.csv"
    validation = next(p for p in receiver.payloads if "validation failed" in p["subject"])
    assert "missing required column(s) text (found: ticket_id, label)" in validation["text"]
