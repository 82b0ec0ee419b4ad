"""The two-cycle demo on the embedded default: local SeaweedFS, ephemeral Prefect, packaged model.

Cycle 1 bootstraps a champion from a first batch of generated tickets (plus a small batch with bad
rows, to show quarantine); cycle 2 ingests a new batch and shows the gate's decision. Then `retrainer
serve` starts on the demo's store and classifies a few tickets over HTTP.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.samples import generate_tickets, tickets_to_csv
from app.seaweed import LocalS3, free_ports
from retrainer.records import RunRecord
from retrainer.report.markdown import render_run_markdown
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import S3Store

DEMO_ACCESS_KEY = "retrainer-demo"
DEMO_SECRET_KEY = "retrainer-demo-secret"  # a local, loopback-only store; never a real credential
DEMO_BUCKET = "ticket-retrainer"
# A batch with two bad rows in twelve (under the 20% bad-row limit): they are quarantined, the rest go on.
BAD_BATCH = (
    "ticket_id,text,label,created_at\n"
    + "".join(
        f"MIX-{n},{text},{label},2026-02-01T10:00:00+00:00\n"
        for n, (text, label) in enumerate(
            [
                ("Export to PDF crashes the app on large reports", "bug"),
                ("", "bug"),
                ("Can we get SSO with Azure AD?", "feature"),
                ("Where do I download last year's invoices?", "question"),
                ("Sync fails with error 409 after the update", "bug"),
                ("Please add a Gantt view to projects", "feature_request"),
                ("Is there an on-premise version?", "general_inquiry"),
                ("Uploads over 2 GB stop at 99 percent", "bug"),
                ("It would help to pin comments", "feature_request"),
                ("How do I remove a user from the billing plan?", "general_inquiry"),
                ("Mobile app logs me out every hour", "urgent"),
                ("Let us export dashboards as PNG", "feature_request"),
            ],
            start=1,
        )
    )
).encode()


def run_demo(workdir: Path, first_batch: int = 600, second_batch: int = 300) -> None:
    """Run both nightly cycles end to end and print what happened and where everything is."""
    s3_dir = workdir / "seaweedfs"
    shutil.rmtree(s3_dir, ignore_errors=True)  # every demo starts from an empty store
    (workdir / "reports").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LocalS3(s3_dir / "data", DEMO_ACCESS_KEY, DEMO_SECRET_KEY, workdir / "seaweedfs.log") as s3:
        resources = demo_resources(s3, workdir)
        store = resources.store
        store.ensure_bucket()
        print(f"SeaweedFS S3 on {s3.endpoint_url}, bucket {DEMO_BUCKET}")
        _drop(store, "batch-0001.csv", tickets_to_csv(generate_tickets(first_batch, seed=1, id_prefix="N1")))
        _drop(store, "batch-0001-bad-rows.csv", BAD_BATCH)
        _cycle(1, workdir, resources)
        _drop(store, "batch-0002.csv", tickets_to_csv(generate_tickets(second_batch, seed=2, id_prefix="N2")))
        record = _cycle(2, workdir, resources)
        _print_locations(store, record, workdir)
        _classify_over_http(s3, workdir)
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")


def demo_resources(s3: LocalS3, workdir: Path) -> Resources:
    """The demo's settings (the environment's, e.g. a RETRAINER_TRAINING__* recipe, with the demo's store and
    work folder on top) and a store holding the demo store's keys: passed to the runs, not exported."""
    s3_settings = S3Settings(endpoint_url=s3.endpoint_url, bucket=DEMO_BUCKET)
    settings = RetrainerSettings(s3=s3_settings, work_dir=(workdir / "work").resolve())
    return Resources(settings, S3Store(s3_settings, credentials=(DEMO_ACCESS_KEY, DEMO_SECRET_KEY)))


def _drop(store, name: str, body: bytes) -> None:
    key = store.settings.incoming_prefix + name
    store.put(key, body, content_type="text/csv")
    rows = body.count(b"\n") - 1  # minus the header line
    print(f"dropped {store.uri(key)} ({rows} tickets)")


def _cycle(number: int, workdir: Path, resources: Resources) -> RunRecord:
    from flows.retrain import retrain

    print(f"\n=== nightly cycle {number} ===")
    cycle_started = time.monotonic()
    record = retrain(resources=resources)
    report = workdir / "reports" / f"cycle-{number}.md"
    report.write_text(render_run_markdown(record))
    print(f"\ncycle {number}: {record.status.upper()} in {time.monotonic() - cycle_started:.0f}s")
    print(
        f"  ingested {record.batches_ingested} batch(es): {record.rows_accepted} rows accepted, "
        f"{record.rows_quarantined} quarantined"
    )
    print(f"  challenger {record.challenger_version}: accuracy {_fmt(record.challenger_accuracy)}")
    print(f"  champion   {record.champion_version}: accuracy {_fmt(record.champion_accuracy)}")
    print(f"  (both scored on the same {record.eval_examples} eval tickets)")
    for reason in record.reasons:
        print(f"  - {reason}")
    print(f"  report: {report}")
    return record


def _print_locations(store, record, workdir: Path) -> None:
    from tasks.registry import fetch_model, pointer_key, version_prefix

    local_model = fetch_model(store, record.production_version, workdir / "production-model")
    print("\nwhere things are:")
    print(f"  production pointer  {store.uri(pointer_key(store))} -> {record.production_version}")
    print(f"  production model    {store.uri(version_prefix(store, record.production_version))}")
    print(f"  local copy          {local_model}")
    print(f"  quarantine          {store.uri(store.settings.quarantine_prefix)}")
    print(f"  decision history    {store.uri(store.settings.models_prefix + 'history/')}")
    print(f"  reports             {workdir / 'reports'}")
    print(f"  S3 data dir         {workdir / 'seaweedfs'} (serve it again: retrainer s3 --dir ...)")


SERVE_EXAMPLES = (
    ("D-1", "The app crashes every time I export a report to PDF"),
    ("D-2", "Please add a dark mode to the mobile app"),
    ("D-3", "How do I change the e-mail address of my account?"),
)


def _classify_over_http(s3: LocalS3, workdir: Path, timeout_s: float = 180) -> None:
    """Start `retrainer serve` on the demo's store, classify a few tickets over HTTP, stop it (SIGTERM)."""
    port = free_ports(("serve",))["serve"]
    env = {
        **os.environ,
        **_serve_environment(s3.endpoint_url),
        "RETRAINER_WORK_DIR": str((workdir / "work").resolve()),
    }
    log = workdir / "serve.log"
    print(f"\n=== serving the production model: retrainer serve --port {port} (log: {log}) ===")
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(f"{url}/readyz", service, log, timeout_s)
        tickets = [{"id": ticket_id, "text": text} for ticket_id, text in SERVE_EXAMPLES]
        response = httpx.post(f"{url}/v1/classify", json={"tickets": tickets}, timeout=60)
        response.raise_for_status()
        texts = dict(SERVE_EXAMPLES)
        print(f"POST {url}/v1/classify with {len(tickets)} tickets:")
        for prediction in response.json()["predictions"]:
            print(
                f"  {prediction['id']} {prediction['label']:<16} {prediction['confidence']:.2f}  "
                f"{texts[prediction['id']]}  ({prediction['model_version']})"
            )
    finally:
        _stop_service(service)
    print("serve it again (two shells; the first prints the endpoint):")
    print(f"  retrainer s3 --dir {workdir / 'seaweedfs'}")
    # the secret by name only: even a loopback demo's secret key does not go to a terminal or a CI log
    shown = _serve_environment("<endpoint>") | {"AWS_SECRET_ACCESS_KEY": "<DEMO_SECRET_KEY in app/demo.py>"}
    variables = " ".join(f"{name}={value}" for name, value in shown.items())
    print(f"  {variables} retrainer serve --port 8080")
    print(
        "  curl -s localhost:8080/v1/classify -H 'Content-Type: application/json' "
        """-d '{"tickets": [{"id": "T-1", "text": "The app crashes on save"}]}'"""
    )


def _serve_environment(endpoint_url: str) -> dict[str, str]:
    """What `retrainer serve` needs to read the demo's store (loopback-only demo credentials)."""
    return {
        "RETRAINER_S3__ENDPOINT_URL": endpoint_url,
        "RETRAINER_S3__BUCKET": DEMO_BUCKET,
        "AWS_ACCESS_KEY_ID": DEMO_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEMO_SECRET_KEY,
    }


def _wait_until_ready(url: str, service: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"retrainer serve exited with {service.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    raise RuntimeError(f"retrainer serve was not ready within {timeout_s:.0f}s; see {log}")


def _stop_service(service: subprocess.Popen) -> None:
    """SIGTERM (the service drains and exits), SIGKILL if it does not within 30 s."""
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
