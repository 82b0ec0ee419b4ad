"""The two-cycle demo on the embedded default: local SeaweedFS, ephemeral Prefect, packaged model.

Cycle 1 bootstraps a champion from a first batch of generated tickets (plus a small batch with bad
rows, to show quarantine); cycle 2 ingests a new batch and shows the gate's decision.
"""

import os
import shutil
import time
from pathlib import Path

from retrainer.samples import generate_tickets, tickets_to_csv
from retrainer.seaweed import LocalS3

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
        _configure_environment(s3, workdir)
        from retrainer.settings import RetrainerSettings  # after the environment is set
        from retrainer.storage import ObjectStore

        store = ObjectStore(RetrainerSettings().s3)
        store.ensure_bucket()
        print(f"SeaweedFS S3 on {s3.endpoint_url}, bucket {DEMO_BUCKET}")
        _drop(store, "batch-0001.csv", tickets_to_csv(generate_tickets(first_batch, seed=1, id_prefix="N1")))
        _drop(store, "batch-0001-bad-rows.csv", BAD_BATCH)
        _cycle(1, workdir)
        _drop(store, "batch-0002.csv", tickets_to_csv(generate_tickets(second_batch, seed=2, id_prefix="N2")))
        outcome = _cycle(2, workdir)
        _print_locations(store, outcome, workdir)
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")


def _configure_environment(s3: LocalS3, workdir: Path) -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID=DEMO_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=DEMO_SECRET_KEY,
        RETRAINER_S3__ENDPOINT_URL=s3.endpoint_url,
        RETRAINER_S3__BUCKET=DEMO_BUCKET,
        RETRAINER_WORK_DIR=str((workdir / "work").resolve()),
    )


def _drop(store, name: str, body: bytes) -> None:
    key = store.settings.incoming_prefix + name
    store.put(key, body, content_type="text/csv")
    rows = body.count(b"\n") - 1  # minus the header line
    print(f"dropped {store.uri(key)} ({rows} tickets)")


def _cycle(number: int, workdir: Path):
    from flows.retrain import retrain
    from tasks.report import render_outcome_markdown

    print(f"\n=== nightly cycle {number} ===")
    cycle_started = time.monotonic()
    outcome = retrain()
    report = workdir / "reports" / f"cycle-{number}.md"
    report.write_text(render_outcome_markdown(outcome))
    print(f"\ncycle {number}: {outcome.status.upper()} in {time.monotonic() - cycle_started:.0f}s")
    print(
        f"  ingested {outcome.batches_ingested} batch(es): {outcome.rows_accepted} rows accepted, "
        f"{outcome.rows_quarantined} quarantined"
    )
    print(f"  challenger {outcome.challenger_version}: accuracy {_fmt(outcome.challenger_accuracy)}")
    print(f"  champion   {outcome.champion_version}: accuracy {_fmt(outcome.champion_accuracy)}")
    print(f"  (both scored on the same {outcome.eval_examples} eval tickets)")
    for reason in outcome.reasons:
        print(f"  - {reason}")
    print(f"  report: {report}")
    return outcome


def _print_locations(store, outcome, workdir: Path) -> None:
    from tasks.registry import fetch_model, pointer_key, version_prefix

    local_model = fetch_model(store, outcome.production_version, workdir / "production-model")
    print("\nwhere things are:")
    print(f"  production pointer  {store.uri(pointer_key(store))} -> {outcome.production_version}")
    print(f"  production model    {store.uri(version_prefix(store, outcome.production_version))}")
    print(f"  local copy          {local_model}")
    print(f"  quarantine          {store.uri(store.settings.quarantine_prefix)}")
    print(f"  decision history    {store.uri(store.settings.models_prefix + 'history/')}")
    print(f"  reports             {workdir / 'reports'}")
    print(f"  S3 data dir         {workdir / 'seaweedfs'} (serve it again: retrainer s3 --dir ...)")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
