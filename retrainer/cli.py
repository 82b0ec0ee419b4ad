"""The ``retrainer`` command: demo, one retrain run, sample tickets, a local S3."""

import argparse
import os
import sys
import time
from pathlib import Path

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
    run.set_defaults(handler=_run)

    generate = commands.add_parser("generate-tickets", help="write a CSV batch of generated sample tickets")
    generate.add_argument("output", type=Path, help="CSV file to write")
    generate.add_argument("--count", type=int, default=300)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(handler=_generate)

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

    outcome = retrain()
    print(outcome.model_dump_json(indent=2))
    return 0


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
