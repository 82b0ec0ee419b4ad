"""The ``retrainer`` command: demo, one retrain run, sample tickets, a local S3."""

import argparse
import os
import sys
import time
from pathlib import Path

from retrainer.settings import TRAINING_PRESETS, RetrainerSettings

# Quiet, offline-friendly defaults for interactive use; anything the user set wins.
_CLI_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``retrainer`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name, value in _CLI_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return args.handler(args)


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
        choices=sorted(TRAINING_PRESETS),
        help="training recipe (default: RETRAINER_TRAINING_PRESET)",
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

    rollback = commands.add_parser("rollback", help="point production back at an earlier version")
    rollback.add_argument("--to", dest="to_version", help="version to restore (default: the previous one)")
    rollback.add_argument("--reason", default=None, help="why (recorded in the history)")
    rollback.set_defaults(handler=_rollback)

    predict = commands.add_parser("predict", help="classify texts with the production model")
    predict.add_argument("texts", nargs="+", help="ticket texts")
    predict.set_defaults(handler=_predict)

    score = commands.add_parser("score", help="classify every row of a CSV file with the production model")
    score.add_argument("input", type=Path, help="CSV file with a text column")
    score.add_argument("--output", type=Path, help="where to write (default: <input>.scored.csv)")
    score.add_argument("--text-column", default="text")
    score.set_defaults(handler=_score)

    alerts = commands.add_parser("alerts", help="server-side alerting (Prefect automations)")
    alerts_commands = alerts.add_subparsers(required=True, metavar="COMMAND")
    apply = alerts_commands.add_parser("apply", help="create or replace the project's automations")
    apply.add_argument("--block", required=True, help="notification block, e.g. slack-webhook/ml-alerts")
    apply.set_defaults(handler=_apply_alerts)

    setup = commands.add_parser(
        "setup", help="create work pools (and, with --block, automations); idempotent"
    )
    setup.add_argument("--block", help="notification block for the automations, e.g. slack-webhook/ml-alerts")
    setup.set_defaults(handler=_setup)

    s3 = commands.add_parser("s3", help="serve a local SeaweedFS S3 on 127.0.0.1 until Ctrl+C")
    s3.add_argument("--dir", type=Path, default=Path(".demo/seaweedfs"), help="SeaweedFS data dir")
    s3.set_defaults(handler=_serve_s3)
    return parser


def _demo(args) -> int:
    from retrainer.demo import run_demo

    run_demo(args.workdir, args.first_batch, args.second_batch)
    return 0


def _run(args) -> int:
    from flows.retrain import retrain

    # The preset, with any RETRAINER_TRAINING__* on top, as the run's training parameter.
    training = RetrainerSettings(training_preset=args.preset).training if args.preset else None
    outcome = retrain(training=training)
    print(outcome.model_dump_json(indent=2))
    return 0


def _models_list(args) -> int:
    from tasks.registry import list_versions

    rows = list_versions(_store())
    print(f"{'':2}{'version':34} {'accuracy':>8} {'macro F1':>8}  dataset")
    for row in rows:
        marker = "* " if row.in_production else "  "
        scores = f"{_number(row.accuracy):>8} {_number(row.macro_f1):>8}"
        print(f"{marker}{row.version:34} {scores}  {row.dataset_version}")
    print(f"{len(rows)} version(s); * = production")
    return 0


def _rollback(args) -> int:
    import getpass

    from tasks.registry import rollback

    reason = args.reason or f"manual rollback by {getpass.getuser()}"
    pointer = rollback(_store(), reason, args.to_version)
    print(f"production is now {pointer.version} (was rolled back: {reason})")
    return 0


def _predict(args) -> int:
    from retrainer import LABELS
    from tasks.evaluate import predict_probabilities

    settings, version, model_dir = _production_model()
    probabilities = predict_probabilities(model_dir, args.texts, settings.training.max_length)
    print(f"model {version}")
    for text, row in zip(args.texts, probabilities.tolist(), strict=True):
        best = max(range(len(LABELS)), key=row.__getitem__)
        print(f"{LABELS[best]:16} {row[best]:.3f}  {text}")
    return 0


def _score(args) -> int:
    import pandas as pd

    from retrainer import LABELS
    from tasks.evaluate import predict_probabilities

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


def _apply_alerts(args) -> int:
    from retrainer.automations import apply_automations

    for name in apply_automations(args.block):
        print(f"applied automation {name!r} -> {args.block}")
    return 0


def _setup(args) -> int:
    from retrainer.platform import set_up

    for action in set_up(args.block):
        print(action)
    return 0


def _store():
    from retrainer.storage import ObjectStore

    return ObjectStore(RetrainerSettings().s3)


def _production_model():
    from retrainer.storage import ObjectStore
    from tasks.registry import fetch_production_model

    settings = RetrainerSettings()
    version, model_dir = fetch_production_model(ObjectStore(settings.s3), settings.model_cache_dir)
    return settings, version, model_dir


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _generate(args) -> int:
    from retrainer.samples import generate_tickets, tickets_to_csv

    args.output.write_bytes(tickets_to_csv(generate_tickets(args.count, seed=args.seed)))
    print(f"wrote {args.count} tickets to {args.output}")
    return 0


def _serve_s3(args) -> int:
    from retrainer.demo import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
    from retrainer.seaweed import LocalS3

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


if __name__ == "__main__":
    sys.exit(main())
