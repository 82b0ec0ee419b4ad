"""S3 bytes a bucket holds after N nightly cycles, per top-level prefix, and what the scratch cleanup freed.

Each cycle drops a batch of generated tickets and runs the real `retrain` flow (local SeaweedFS,
ephemeral Prefect API, the configured base model: the packaged MiniLM-L6 by default). Checkpoints
are deleted once a run has decided; without that cleanup they would stay in `runs/checkpoints/`.

    python benchmarks/storage_footprint.py --cycles 3 --epochs 1
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from app.samples import generate_tickets, tickets_to_csv
from app.seaweed import LocalS3
from flows.retrain import retrain
from retrainer.resources import Resources
from retrainer.settings import RetrainerSettings, S3Settings
from retrainer.storage import S3Store

KEY, SECRET = "footprint", "footprint-secret"


def bytes_by_prefix(store) -> Counter:
    """Bytes under each top-level prefix (runs/checkpoints/ counted on its own)."""
    sizes: Counter = Counter()
    for info in store.list_objects(""):
        top = (
            "runs/checkpoints/" if info.key.startswith("runs/checkpoints/") else info.key.split("/")[0] + "/"
        )
        sizes[top] += info.size
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument(
        "--epochs", type=float, default=1.0, help="epochs per run (checkpoints: one per epoch)"
    )
    parser.add_argument("--batch", type=int, default=300, help="tickets per nightly batch")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="footprint-"))
    with LocalS3(root / "s3", KEY, SECRET, root / "weed.log") as s3:
        s3_settings = S3Settings(endpoint_url=s3.endpoint_url, bucket="footprint")
        settings = RetrainerSettings(s3=s3_settings, work_dir=root / "work")
        settings = settings.with_overrides(
            settings.training.model_copy(update={"num_train_epochs": args.epochs})
        )
        resources = Resources(settings, S3Store(s3_settings, credentials=(KEY, SECRET)))
        store = resources.store
        store.ensure_bucket()
        print(f"| cycle | status | run s | total MB | {' | '.join(PREFIXES)} |")
        print(f"|---|---|---|---|{'---|' * len(PREFIXES)}")
        for cycle in range(1, args.cycles + 1):
            tickets = generate_tickets(args.batch, seed=cycle, id_prefix=f"N{cycle}")
            store.put(f"incoming/batch-{cycle:04d}.csv", tickets_to_csv(tickets))
            started = time.monotonic()
            record = retrain(resources=resources)
            sizes = bytes_by_prefix(store)
            row = " | ".join(f"{sizes.get(prefix, 0) / 1e6:.1f}" for prefix in PREFIXES)
            total = sum(sizes.values()) / 1e6
            print(f"| {cycle} | {record.status} | {time.monotonic() - started:.0f} | {total:.1f} | {row} |")


PREFIXES = ("models/", "datasets/", "runs/", "runs/checkpoints/", "reports/", "quarantine/", "state/")

if __name__ == "__main__":
    main()
