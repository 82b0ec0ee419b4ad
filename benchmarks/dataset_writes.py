"""Bytes a night writes to ``datasets/``: dataset versions in parts vs one whole Parquet object a version.

Starts from `--base` generated tickets, then adds `--batch` new ones a night for `--nights` nights through
`tasks.dataset.write_curated` on a local-directory store (no S3 server, no training), and prints per
night the parts the version keeps, the bytes that night wrote (new objects under ``datasets/``) and the
bytes the earlier layout wrote (the whole curated dataset as one object), with the totals.

    python benchmarks/dataset_writes.py --base 20000 --batch 300 --nights 30
"""

import argparse
import io
import tempfile
from pathlib import Path

import pandas as pd

from app.samples import generate_tickets
from retrainer.settings import S3Settings
from retrainer.storage import ObjectStore, open_store
from tasks.dataset import latest_rows, version_parts, with_splits, write_curated


def sizes(store: ObjectStore) -> dict[str, int]:
    """Every object under ``datasets/`` and its size."""
    return {info.key: info.size for info in store.list_objects(store.settings.datasets_prefix)}


def whole_object_bytes(curated: pd.DataFrame) -> int:
    """What the earlier layout wrote for a version: the whole dataset as one Parquet object."""
    buffer = io.BytesIO()
    curated.to_parquet(buffer, index=False)
    return len(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=int, default=20_000, help="tickets curated before the first night")
    parser.add_argument("--batch", type=int, default=300, help="new tickets a night")
    parser.add_argument("--nights", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dataset-writes-"))
    store = open_store(S3Settings(endpoint_url=root.as_uri(), bucket="bench"))
    store.ensure_bucket()
    curated = with_splits(None, generate_tickets(args.base, seed=0, id_prefix="base"), 0.2, 0.1)
    version = write_curated(store, curated)
    totals = [0, 0]
    print("| night | rows | parts | written (parts) KB | written (whole object) KB |")
    print("|---|---|---|---|---|")
    for night in range(1, args.nights + 1):
        new = generate_tickets(args.batch, seed=night, id_prefix=f"n{night}")
        new = with_splits(curated, new, 0.2, 0.1)
        before = sizes(store)
        version = write_curated(store, new, version)
        curated = latest_rows([curated, new])
        written = sum(size for key, size in sizes(store).items() if key not in before)
        whole = whole_object_bytes(curated)
        totals = [totals[0] + written, totals[1] + whole]
        parts = len(version_parts(store, version))
        print(f"| {night} | {len(curated):,} | {parts} | {written / 1e3:,.1f} | {whole / 1e3:,.1f} |")
    print(f"| total | | | {totals[0] / 1e3:,.1f} | {totals[1] / 1e3:,.1f} |")


if __name__ == "__main__":
    main()
