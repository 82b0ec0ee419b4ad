"""The ``retrainer`` command: demo, one retrain run, sample tickets, a local S3."""

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from retrainer.settings import (
    CLI_ENVIRONMENT_DEFAULTS,
    TRAINING_PRESETS,
    RetrainerSettings,
    renamed_preset_message,
)


class RunFailedError(Exception):
    """A retrain run ended Failed (its run record has been printed; the message says why)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``retrainer`` console script.

    The project's known errors end as one line on stderr, ``retrainer: error: ...``, and exit 2 when
    the request was refused (see `_exit_code`) or 1 when a run or the store failed. Anything else
    is a bug and keeps its traceback.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for name, value in CLI_ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        return args.handler(args)
    except Exception as error:
        exit_code = _exit_code(error)
        if exit_code is None:
            raise
        print(f"retrainer: error: {_one_line(str(error) or type(error).__name__)}", file=sys.stderr)
        return exit_code


def _exit_code(error: Exception) -> int | None:
    """2: the request was refused (by the registry: bad target, unknown version, nothing in production;
    by setup: no Prefect server configured, an alert webhook it cannot deliver to; by forget: no ticket id;
    by any command: an invalid ``RETRAINER_*`` setting);
    1: a run, the store, the Prefect server or their credentials failed;
    None: not one of the project's known errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    from app.platform import PrefectServerError, SetupRefusedError
    from retrainer.core.validation import ValidationFailedError
    from retrainer.settings import InvalidSettingError
    from retrainer.storage import StorageError
    from tasks.erasure import ErasureRequestError
    from tasks.registry import RegistryError

    if isinstance(error, RegistryError | SetupRefusedError | ErasureRequestError | InvalidSettingError):
        return 2
    known_failures = RunFailedError | StorageError | ValidationFailedError | ClientError | BotoCoreError
    if isinstance(error, known_failures | PrefectServerError):
        return 1
    return None


def _one_line(message: str) -> str:
    return " / ".join(line.strip() for line in message.splitlines() if line.strip())


def _preset_name(name: str) -> str:
    # argparse would only say "invalid choice" for an old name; this says what it is called now.
    message = renamed_preset_message(name)
    if message:
        raise argparse.ArgumentTypeError(message)
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrainer", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="two nightly cycles on the embedded default (local S3, packaged model)"
    )
    demo.add_argument("--workdir", type=Path, default=Path(".demo"), help="where the demo keeps its files")
    demo.add_argument("--first-batch", type=int, default=600, help="tickets in the first batch")
    demo.add_argument("--second-batch", type=int, default=300, help="tickets in the second batch")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="one retrain run against the configured S3 (RETRAINER_* settings)")
    run.add_argument(
        "--preset",
        type=_preset_name,
        choices=sorted(TRAINING_PRESETS),
        help="training recipe, and for `large` its base model (default: RETRAINER_TRAINING_PRESET)",
    )
    run.set_defaults(handler=_run)

    generate = commands.add_parser("generate-tickets", help="write a CSV batch of generated sample tickets")
    generate.add_argument("output", type=Path, help="CSV file to write")
    generate.add_argument("--count", type=int, default=300)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(handler=_generate)

    models = commands.add_parser("models", help="the model registry")
    models_commands = models.add_subparsers(required=True, metavar="COMMAND")
    models_list = models_commands.add_parser(
        "list", help="published versions, their metrics, which is production"
    )
    models_list.set_defaults(handler=_models_list)

    datasets = commands.add_parser("datasets", help="the curated dataset versions and their parts")
    datasets_commands = datasets.add_subparsers(required=True, metavar="COMMAND")
    gc = datasets_commands.add_parser(
        "gc", help="delete the parts of curated data that no dataset version lists any more"
    )
    gc.add_argument(
        "--min-age-days",
        type=_non_negative_days,
        default=1.0,
        help="keep parts younger than this, so a run that is writing its version keeps its part (default 1)",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.set_defaults(handler=_datasets_gc)

    rollback = commands.add_parser("rollback", help="point production back at an earlier version")
    rollback.add_argument("--to", dest="to_version", help="version to restore (default: the previous one)")
    rollback.add_argument("--reason", default=None, help="why (recorded in the history)")
    rollback.set_defaults(handler=_rollback)

    forget = commands.add_parser(
        "forget",
        help="erase tickets by id (curated data, incoming, quarantine), report the models trained on them, "
        "record the request",
    )
    forget.add_argument("ticket_ids", nargs="+", metavar="TICKET_ID", help="ids of the tickets to erase")
    forget.add_argument("--requested-by", help="who asked (recorded; default: the OS user)")
    forget.add_argument("--note", default="", help="why, or the request's reference (recorded)")
    forget.set_defaults(handler=_forget)

    predict = commands.add_parser("predict", help="classify texts with the production model")
    predict.add_argument("texts", nargs="+", help="ticket texts")
    predict.set_defaults(handler=_predict)

    score = commands.add_parser("score", help="classify every row of a CSV file with the production model")
    score.add_argument("input", type=Path, help="CSV file with a text column")
    score.add_argument("--output", type=Path, help="where to write (default: <input>.scored.csv)")
    score.add_argument("--text-column", default="text")
    score.set_defaults(handler=_score)

    serve = commands.add_parser(
        "serve",
        help="answer tickets over HTTP with the production model, following it (RETRAINER_SERVE__* settings)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(handler=_serve)

    alerts = commands.add_parser("alerts", help="server-side alerting (Prefect automations)")
    alerts_commands = alerts.add_subparsers(required=True, metavar="COMMAND")
    apply = alerts_commands.add_parser("apply", help="create or replace the project's automations")
    apply.add_argument("--block", required=True, help="notification block, e.g. slack-webhook/ml-alerts")
    apply.set_defaults(handler=_apply_alerts)

    setup = commands.add_parser(
        "setup", help="create work pools (and, with --block, automations); idempotent"
    )
    only_one = setup.add_mutually_exclusive_group()
    only_one.add_argument(
        "--block", help="notification block for the automations, e.g. slack-webhook/ml-alerts"
    )
    setup.add_argument(
        "--create-bucket",
        action="store_true",
        help="also create the configured bucket (RETRAINER_S3__BUCKET) if it does not exist; runs never do"
        " (without a Prefect server: --bucket-only)",
    )
    only_one.add_argument(
        "--bucket-only",
        action="store_true",
        help="create the configured bucket if it does not exist and nothing else (needs no Prefect server)",
    )
    only_one.add_argument(
        "--retention",
        action="store_true",
        help="apply the retention rules (RETRAINER_S3__*_EXPIRE_DAYS) to the existing bucket and nothing else"
        " (needs no Prefect server; --create-bucket and --bucket-only apply them too)",
    )
    setup.set_defaults(handler=_setup)

    worker = commands.add_parser(
        "worker",
        help="a Prefect process worker for a pool that, on SIGTERM, takes no new runs, drains, then exits",
    )
    worker.add_argument("--pool", required=True, help="work pool to poll, e.g. gpu")
    worker.add_argument("--limit", type=int, help="most flow runs at once (default: no limit)")
    worker.add_argument("--name", help="worker name shown in the UI (default: a random one)")
    worker.add_argument("--with-healthcheck", action="store_true", help="serve Prefect's /health endpoint")
    worker.add_argument(
        "--drain-seconds",
        type=int,
        help="after SIGTERM, how long runs in flight may finish before they are stopped"
        " (default: RETRAINER_WORKER_DRAIN_S, 600)",
    )
    worker.set_defaults(handler=_worker)

    s3 = commands.add_parser("s3", help="serve a local SeaweedFS S3 on 127.0.0.1 until Ctrl+C")
    s3.add_argument("--dir", type=Path, default=Path(".demo/seaweedfs"), help="SeaweedFS data dir")
    s3.set_defaults(handler=_serve_s3)
    return parser


def _demo(args) -> int:
    from app.demo import run_demo
    from app.ephemeral_api import start_ephemeral_api_bound_to_this_process

    start_ephemeral_api_bound_to_this_process()  # no-op with PREFECT_API_URL set
    run_demo(args.workdir, args.first_batch, args.second_batch)
    return 0


def _run(args) -> int:
    if args.preset:  # the run reads its settings when it starts: the preset's recipe and base model
        os.environ["RETRAINER_TRAINING_PRESET"] = args.preset
    RetrainerSettings()  # an invalid setting is refused in one line here, before a run (and its log) starts

    from app.ephemeral_api import start_ephemeral_api_bound_to_this_process
    from flows.retrain import retrain

    start_ephemeral_api_bound_to_this_process()  # no-op with PREFECT_API_URL set
    with _console_without_known_error_tracebacks():
        state = retrain(return_state=True)
    if state.is_completed():
        print(state.result().model_dump_json(indent=2))
        return 0
    record, message = _failed_run_record(state)
    print(record.model_dump_json(indent=2))
    raise RunFailedError(f"retrain run {record.run_id} ended {state.name}: {message}")


def _failed_run_record(state):
    """The record the failed flow attached to its exception (or a bare one) and the error message."""
    from flows.retrain import failed_record
    from retrainer.records import RunRecord

    error = state.result(raise_on_failure=False)
    message = str(error) if isinstance(error, BaseException) and str(error) else state.message or state.name
    record = failed_record(error) if isinstance(error, BaseException) else None
    if record is None:  # it failed before the flow body ran, or crashed
        run_id = str(state.state_details.flow_run_id)
        record = RunRecord(status="failed", run_id=run_id, reasons=[message])
    return record, message


@contextmanager
def _console_without_known_error_tracebacks():
    """Prefect logs a failing flow's or task's exception with its traceback; for the project's known
    errors the console gets one line from `main` instead (the API log, and the UI, keep the traceback)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [
        handler for handler in logging.getLogger().handlers if isinstance(handler, PrefectConsoleHandler)
    ]
    for handler in handlers:
        handler.addFilter(_without_known_error_tracebacks)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_without_known_error_tracebacks)


def _without_known_error_tracebacks(record) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, Exception) and _exit_code(error) is not None)


def _models_list(args) -> int:
    from tasks.registry import list_versions

    rows = list_versions(_store())
    print(f"{'':2}{'version':34} {'status':12} {'accuracy':>8} {'macro F1':>8}  dataset")
    for row in rows:
        marker = "* " if row.in_production else "  "
        scores = f"{_number(row.accuracy):>8} {_number(row.macro_f1):>8}"
        print(f"{marker}{row.version:34} {row.status:12} {scores}  {row.dataset_version}")
    print(
        f"{len(rows)} version(s); * = production; servable = passed its smoke test (a rollback target); "
        "interrupted = its run died before the smoke test (never served); "
        "corrupt = a stored file differs from its publish (never served)"
    )
    for row in rows:
        if row.problem:
            print(f"{row.version} is corrupt: {row.problem}")
    return 0


def _non_negative_days(value: str) -> float:
    days = float(value)
    if days < 0:
        raise argparse.ArgumentTypeError(f"{value} days: an age is not negative")
    return days


def _datasets_gc(args) -> int:
    from datetime import timedelta

    from tasks.dataset import delete_unreferenced_parts

    parts = delete_unreferenced_parts(_store(), timedelta(days=args.min_age_days), dry_run=args.dry_run)
    for info in parts:
        print(info.key)
    verb = "would delete" if args.dry_run else "deleted"
    size = sum(info.size for info in parts)
    print(f"{verb} {len(parts)} part(s) no dataset version lists ({size:,} bytes)")
    return 0


def _rollback(args) -> int:
    import getpass

    from tasks.registry import rollback

    reason = args.reason or f"manual rollback by {getpass.getuser()}"
    pointer = rollback(_store(), reason, args.to_version, RetrainerSettings().model_cache_dir)
    print(f"production is now {pointer.version} (was rolled back: {reason})")
    return 0


def _forget(args) -> int:
    import getpass

    RetrainerSettings()  # an invalid setting is refused in one line here, before the flow run starts

    from app.ephemeral_api import start_ephemeral_api_bound_to_this_process
    from flows.forget import forget

    start_ephemeral_api_bound_to_this_process()  # no-op with PREFECT_API_URL set
    with _console_without_known_error_tracebacks():
        record = forget(args.ticket_ids, args.requested_by or getpass.getuser(), args.note)
    print("\n".join(record.summary()))
    return 0


def _predict(args) -> int:
    from retrainer.core.labels import LABELS
    from retrainer.core.scoring import predict_probabilities

    settings, version, model_dir = _production_model()
    probabilities = predict_probabilities(model_dir, args.texts, settings.training.max_length)
    print(f"model {version}")
    for text, row in zip(args.texts, probabilities.tolist(), strict=True):
        best = max(range(len(LABELS)), key=row.__getitem__)
        print(f"{LABELS[best]:16} {row[best]:.3f}  {text}")
    return 0


def _score(args) -> int:
    import pandas as pd

    from retrainer.core.labels import LABELS
    from retrainer.core.scoring import predict_probabilities

    rows = pd.read_csv(args.input, dtype=str, keep_default_na=False)
    if args.text_column not in rows.columns:
        print(
            f"{args.input}: no column {args.text_column!r} (found: {', '.join(rows.columns)})",
            file=sys.stderr,
        )
        return 2
    settings, version, model_dir = _production_model()
    probabilities = predict_probabilities(
        model_dir, rows[args.text_column].tolist(), settings.training.max_length
    )
    rows["predicted_label"] = [LABELS[index] for index in probabilities.argmax(dim=-1).tolist()]
    rows["confidence"] = probabilities.max(dim=-1).values.round(decimals=4).tolist()
    rows["model_version"] = version
    output = args.output or args.input.with_suffix(".scored.csv")
    rows.to_csv(output, index=False)
    print(f"scored {len(rows)} rows with {version} -> {output}")
    return 0


def _serve(args) -> int:
    from app.serving.server import run_service

    run_service(RetrainerSettings(), args.host, args.port)
    return 0


def _apply_alerts(args) -> int:
    from app.automations import apply_automations
    from app.platform import require_prefect_server

    require_prefect_server("retrainer alerts apply")  # refuses a temporary server, names bad credentials
    for name in apply_automations(args.block):
        print(f"applied automation {name!r} -> {args.block}")
    return 0


def _setup(args) -> int:
    from app.platform import apply_retention, create_bucket, set_up

    if args.bucket_only:  # the store alone: no Prefect server is asked for, or started
        print(create_bucket(RetrainerSettings().s3))
        return 0
    if args.retention:
        print(apply_retention(_store()))
        return 0
    # Without a Prefect server, setup is refused before anything, the bucket included, is changed.
    for action in set_up(args.block, bucket=RetrainerSettings().s3 if args.create_bucket else None):
        print(action)
    return 0


def _store():
    """The configured store, after checking its bucket exists and the credentials may use it."""
    from retrainer.storage import open_store

    store = open_store(RetrainerSettings().s3)
    store.require_bucket()
    return store


def _production_model():
    from tasks.registry import fetch_production_model

    settings = RetrainerSettings()
    version, model_dir = fetch_production_model(_store(), settings.model_cache_dir)
    return settings, version, model_dir


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _generate(args) -> int:
    from app.samples import generate_tickets, tickets_to_csv

    args.output.write_bytes(tickets_to_csv(generate_tickets(args.count, seed=args.seed)))
    print(f"wrote {args.count} tickets to {args.output}")
    return 0


def _serve_s3(args) -> int:
    from app.demo import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
    from app.seaweed import LocalS3

    access_key = os.environ.get("AWS_ACCESS_KEY_ID", DEMO_ACCESS_KEY)
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", DEMO_SECRET_KEY)
    with LocalS3(args.dir / "data", access_key, secret_key, args.dir.parent / "seaweedfs.log") as s3:
        print(f"S3 on {s3.endpoint_url} (access key {access_key}); Ctrl+C to stop", flush=True)
        try:
            while s3.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def _worker(args) -> int:
    from prefect.settings import PREFECT_API_URL

    from app.worker import run_worker

    if not PREFECT_API_URL.value():
        print("retrainer: error: a worker needs a Prefect server: set PREFECT_API_URL", file=sys.stderr)
        return 2
    drain_s = args.drain_seconds if args.drain_seconds is not None else RetrainerSettings().worker_drain_s
    run_worker(
        args.pool, limit=args.limit, name=args.name, with_healthcheck=args.with_healthcheck, drain_s=drain_s
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
