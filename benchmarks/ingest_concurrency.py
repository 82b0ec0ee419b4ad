"""Loading 1,000 small batch objects from SeaweedFS: concurrently vs one by one.

Both load the same objects with the project's loader (`load_batches`: download + parse) in this
process, first with one worker (one by one), then with `--workers`. Optionally behind a loopback
proxy that adds `--latency-ms` to every response, as a remote S3 endpoint would. Prints seconds,
objects/s and the ratio. Run: `.venv/bin/python benchmarks/ingest_concurrency.py [--latency-ms 10]`.
"""

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.samples import generate_tickets, tickets_to_csv
from app.seaweed import LocalS3, free_ports
from retrainer.settings import IngestSettings, S3Settings
from retrainer.storage import S3Store
from tasks.ingest import load_batches


def _serve_with_latency(listen_port: int, target_port: int, latency_s: float) -> None:
    """A loopback TCP proxy that delays every chunk from the server by `latency_s` (a crude RTT)."""

    async def pipe(reader, writer, delay):
        try:
            while chunk := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            pipe(client_reader, server_writer, 0), pipe(server_reader, client_writer, latency_s)
        )

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as scratch,
        LocalS3(Path(scratch) / "s3", "bench", "bench-secret", Path(scratch) / "weed.log") as s3,
    ):
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
        endpoint, proxy = s3.endpoint_url, None
        if args.latency_ms:
            port = free_ports(("proxy",))["proxy"]
            proxy = multiprocessing.Process(
                target=_serve_with_latency,
                args=(port, s3.ports["s3.port"], args.latency_ms / 1000),
                daemon=True,
            )
            proxy.start()
            time.sleep(1)
            endpoint = f"http://127.0.0.1:{port}"
        settings = S3Settings(endpoint_url=endpoint, bucket="bench", max_pool_connections=args.workers)
        store = S3Store(settings)
        store.ensure_bucket()
        body = tickets_to_csv(generate_tickets(10, seed=1))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: store.put(f"incoming/b-{n:05d}.csv", body), range(args.objects)))
        infos = store.list_objects("incoming/")
        timings = {}
        for workers in (1, args.workers):
            started = time.perf_counter()
            loaded = load_batches(store, infos, IngestSettings(max_concurrency=workers))
            timings[workers] = time.perf_counter() - started
            assert len(loaded) == args.objects and all(batch.error is None for batch in loaded)
        if proxy:
            proxy.terminate()
    print(
        f"{args.objects} objects of 10 tickets, added latency {args.latency_ms:g} ms, {os.cpu_count()} CPUs"
    )
    for workers, seconds in timings.items():
        print(f"  {workers:3d} worker(s): {seconds:6.2f}s  {args.objects / seconds:7.1f} objects/s")
    print(f"  ratio: {timings[1] / timings[args.workers]:.2f}x")


if __name__ == "__main__":
    main()
