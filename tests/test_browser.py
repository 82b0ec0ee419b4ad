"""The Prefect UI in a real browser (Debian's Chromium driven by Playwright): find the
nightly-retrain deployment, open a custom run with its typed parameters, start it, see it complete."""

import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from app.samples import generate_tickets, tickets_to_csv
from retrainer.settings import TrainingConfig
from tasks.registry import read_history, read_production_pointer
from tests.prefect_server import PrefectServer, stop_worker

pytestmark = [pytest.mark.browser, pytest.mark.prefect]  # Chromium on a `prefect server start` of its own
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / ".test-artifacts" / "browser"
# Quiet, offline-safe flags: without the background-networking ones Chromium dials out at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


def _flow_run_state(server: PrefectServer) -> str | None:
    runs = server.api("/flow_runs/filter")
    # The UI's run, not its in-process fine-tune subflow, which completes while the run still publishes.
    started = [run for run in runs if run["state_type"] != "SCHEDULED" and run["parent_task_run_id"] is None]
    return started[0]["state_type"] if started else None


def _submit(page, server: PrefectServer) -> None:
    """Press Submit until the server holds one more flow run (at most three presses, a minute apart).

    Seen once in CI: a press created no run and the page stayed on the form, so the test waited for a
    run that did not exist. A page that still shows the form after three presses fails the test with
    what the page says."""
    runs_before = server.api("/flow_runs/count")
    for press in range(3):
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.api("/flow_runs/count") > runs_before:
                return
            time.sleep(1)
        page.screenshot(path=SCREENSHOTS / f"2-submit-took-no-run-{press}.png")
    page_text = page.inner_text("body")[-3000:]
    pytest.fail(f"three presses of Submit created no flow run; the page says:\n{page_text}")


def test_a_custom_run_from_the_ui_completes_and_publishes(chromium, flow_store_env, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    flow_store_env.put("incoming/batch-1.csv", tickets_to_csv(generate_tickets(150, seed=1)))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with PrefectServer(tmp_path / "prefect") as server:
        env = {**server.environment(), "RETRAINER_CHECKOUT_DIR": str(ROOT)}
        for command in (
            ["-m", "app.cli", "setup"],
            ["-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        ):
            subprocess.run(
                [sys.executable, *command], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
            )
        worker_log = (tmp_path / "worker.log").open("wb")  # read back when the worker dies early
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu", "--type", "process"],
            cwd=tmp_path,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(server.api_url.removesuffix("/api") + "/deployments")
                page.get_by_text("nightly-retrain").first.click()
                expect(page.get_by_text("At 02:00 AM every day")).to_be_visible()
                page.screenshot(path=SCREENSHOTS / "1-deployment.png")
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_text("Custom run").click()
                expect(page.get_by_text("force_reason (Optional)")).to_be_visible()
                page.get_by_text(
                    "TrainingConfig", exact=True
                ).click()  # the typed form of the training config
                expect(page.get_by_text("Learning Rate (Optional)")).to_be_visible()
                default_lr = format(Decimal(str(TrainingConfig().learning_rate)), "f")  # "0.0001"
                expect(page.get_by_role("spinbutton").first).to_have_value(default_lr)  # the typed default
                # A value typed into the form reaches the run (checked on the published model below); one
                # epoch instead of the default eight also keeps this test short.
                epochs = page.locator(  # the number input of the field that this label heads
                    "xpath=//label[contains(normalize-space(), 'Num Train Epochs')]"
                    "/ancestor::div[contains(concat(' ', @class, ' '), ' p-label ')][1]//input"
                )
                epochs.fill("1")
                epochs.press("Tab")  # leave the field, as a person does, so the form takes the value
                expect(epochs).to_have_value("1")
                page.screenshot(path=SCREENSHOTS / "2-custom-run-form.png", full_page=True)
                _submit(page, server)
                deadline = time.monotonic() + 600
                while _flow_run_state(server) not in {"COMPLETED", "FAILED", "CRASHED"}:
                    assert time.monotonic() < deadline, (
                        "the run did not finish in 10 minutes:\n"
                        + server.describe_flow_runs()
                        + "\nworker log:\n"
                        + (tmp_path / "worker.log").read_text()[-3000:]
                    )
                    assert worker.poll() is None, (
                        "the worker exited:\n" + (tmp_path / "worker.log").read_text()[-3000:]
                    )
                    time.sleep(2)
                page.reload()
                page.screenshot(path=SCREENSHOTS / "3-after-run.png", full_page=True)
                browser.close()
            assert _flow_run_state(server) == "COMPLETED"
        finally:
            stop_worker(worker)
    pointer, _ = read_production_pointer(flow_store_env)
    decisions = [record.model_dump(include={"action", "reasons"}) for record in read_history(flow_store_env)]
    assert pointer is not None, f"nothing published; the run decided: {decisions}"
    published = json.loads(flow_store_env.get(f"models/{pointer.version}/metrics.json")[0])
    assert published["training"]["num_train_epochs"] == 1  # as typed into the form
    assert shutil.disk_usage(SCREENSHOTS)  # screenshots saved for humans to look at
    assert sorted(path.name for path in SCREENSHOTS.iterdir()) >= [
        "1-deployment.png",
        "2-custom-run-form.png",
    ]
