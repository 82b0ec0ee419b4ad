"""One night on a bucket of a million curated tickets: every stage but training measured at full size
(`scaling.py --at-scale 1000000`; issue 38).

The bucket is built as nightly runs would have left it, faster: `--batches` batch files in ``incoming/``
(each put, so curated rows carry its ETag), their rows curated as one dataset version in parts of
halving sizes (the shape `tasks.dataset.parts_to_merge` keeps), one manifest entry and one id-index
part per batch, and a champion (a tiny random BERT: the plumbing's cost, not the compute's) published
with all those batches as its lineage, production pointing at it, and its predictions on every eval
ticket stored as known predictions. Then `--new` tickets land in ``incoming/`` and the night runs through
the product's own functions:

- ingest: `flows.retrain.ingest_new_batches` (manifest, discovery, parsing, the id index, the erased-id
  list, the curated data, validation against it, quarantine, the new part and version, the manifest);
- lexical fit (incremental), as `scaling.py` measures it;
- gate scoring: `flows.retrain.score_both` (the bounded eval set, the champion fetched and scored with
  its known predictions, the label check, the challenger scored in-process, the decision), with the
  tiny model on both sides: the plumbing, measured. The compute is the real model's seconds per ticket
  (a probe on `--probe-score` eval tickets) times the tickets each side computed;
- publish: the real model folder as a new version;
- forget: `flows.forget.forget` of one curated ticket id.

Peak memory here is the process's resident size (absolute): the 3 GB target's measure.
"""

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from app.samples import generate_tickets, tickets_to_csv
from flows.forget import forget
from flows.retrain import challenger_predictions_key, ingest_new_batches, score_both
from retrainer.core.base_models import resolve_base_model
from retrainer.core.known_predictions import COLUMNS, PROBABILITY_COLUMNS, text_digest
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.id_index import record_holdings
from retrainer.records import ProductionPointer
from retrainer.resources import Resources
from retrainer.run_steps import Production, RunProgress
from tasks.dataset import EVAL, split_rows, with_splits, write_curated
from tasks.known_predictions import record_eval_predictions, record_predictions
from tasks.manifest import Manifest, commit_manifest, manifest_entry, read_manifest_task
from tasks.registry import flip_production_pointer, new_version_id, publish_model, read_production_pointer

CHAMPION = "champion-at-scale"
MAX_LENGTH = 128


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class ProcessPeak:
    """The process's resident size, sampled every 20 ms by a daemon thread; `value`: the most since the
    last `reset`."""

    def __init__(self) -> None:
        self.value = _rss_mb()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.value = max(self.value, _rss_mb())
            time.sleep(0.02)

    def reset(self) -> None:
        self.value = _rss_mb()


@contextmanager
def timed(name: str, results: dict, peak: ProcessPeak):
    """Time the block into ``results[name]`` with the process's peak resident size during it."""
    peak.reset()
    started = time.perf_counter()
    yield
    results[name] = {"seconds": round(time.perf_counter() - started, 2), "rss_peak_mb": round(peak.value)}
    print(name, results[name], flush=True)


def tiny_model_like(base: str, target: Path) -> Path:
    """A random 2-layer copy of `base`'s architecture (hidden size 32) with its tokenizer and the
    project's labels: what scoring costs besides the model's arithmetic."""
    base = resolve_base_model(base)
    config = AutoConfig.from_pretrained(base)
    config.update(
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    )
    config.num_labels, config.label2id = len(LABELS), dict(LABEL_TO_ID)
    config.id2label = {index: label for label, index in LABEL_TO_ID.items()}
    AutoModelForSequenceClassification.from_config(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


def build_history(resources: Resources, size: int, batches: int, issues) -> tuple[pd.DataFrame, list[dict]]:
    """The bucket as `batches` nights would have left it (module docstring); the eval tickets."""
    store = resources.store
    store.ensure_bucket()
    rows = _history_rows(size, issues)
    batch_of = np.arange(len(rows)) * batches // len(rows)
    keys = [f"incoming/history/{number:05d}.csv" for number in range(batches)]
    etags = []
    for number, key in enumerate(keys):
        tickets = rows.loc[batch_of == number, ["ticket_id", "text", "label"]]
        etags.append(store.put(key, tickets_to_csv(tickets)))
        record_holdings(store, {(key, etags[-1]): tickets["ticket_id"]})  # what each night's run wrote
    rows = rows.assign(source_key=np.array(keys)[batch_of], source_etag=np.array(etags)[batch_of])
    rows = with_splits(None, rows, resources.settings.eval_fraction, resources.settings.validation_fraction)
    version = None
    for first, last in _halving_groups(batches):
        version = write_curated(store, rows[(batch_of >= first) & (batch_of < last)], version)
    counts = np.bincount(batch_of, minlength=batches)
    objects = {
        key: manifest_entry(rows=int(count), accepted=int(count), etag=etag, run_id=f"history-{number}")
        for number, (key, etag, count) in enumerate(zip(keys, etags, counts, strict=True))
    }
    commit_manifest(store, Manifest(dataset_version=version, objects=objects), None)
    lineage = [{"key": key, "etag": etag} for key, etag in zip(keys, etags, strict=True)]
    return split_rows(rows, EVAL), lineage


def _history_rows(size: int, issues) -> pd.DataFrame:
    real = issues[["ticket_id", "text", "label"]].head(size) if issues is not None else None
    generated = generate_tickets(size - (0 if real is None else len(real)), seed=7, id_prefix="H")
    frames = [frame for frame in (real, generated) if frame is not None]
    return pd.concat(frames, ignore_index=True)[["ticket_id", "text", "label"]]


def _halving_groups(batches: int) -> list[tuple[int, int]]:
    """Batch ranges of halving sizes (512, 256, ... for 1,000): the parts a version keeps."""
    groups, first = [], 0
    while first < batches:
        size = 1 << ((batches - first).bit_length() - 1)
        groups.append((first, first + size))
        first += size
    return groups


def publish_champion(
    resources: Resources, model_dir: Path, lineage: list[dict], eval_rows: pd.DataFrame
) -> None:
    """The tiny champion, trained (its lineage says) on every history batch, in production, with its
    predictions on every eval ticket stored (random probabilities: the plumbing reads them the same)."""
    store = resources.store
    publish_model(store, model_dir, CHAMPION, {"lineage": lineage, "accuracy": 0.5, "benchmark": "at-scale"})
    now = pd.Timestamp.now("UTC").to_pydatetime()
    pointer = ProductionPointer(
        version=CHAMPION, accuracy=0.5, dataset_version=None, promoted_at=now, run_id="seed"
    )
    flip_production_pointer(store, pointer, None)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(len(LABELS)), len(eval_rows)).astype("float32")
    part = pd.DataFrame(
        {
            "ticket_id": eval_rows["ticket_id"].to_numpy(),
            "text_sha256": [text_digest(text) for text in eval_rows["text"]],
            **dict(zip(PROBABILITY_COLUMNS, probabilities.T, strict=True)),
        }
    )[list(COLUMNS)]
    record_predictions(store, CHAMPION, "seed", part)


def night(
    resources: Resources, tiny_dir: Path, real_dir: Path, forget_id: str, peak: ProcessPeak, fit_lexical
) -> dict:
    """The night's stages (module docstring), each timed; `fit_lexical(settings, curated, new sources)`
    is `scaling.py`'s incremental lexical fit."""
    results: dict = {}
    store = resources.store
    read_manifest_task(store)  # the first task starts Prefect's ephemeral API: not a stage's cost
    store.put("incoming/night.csv", tickets_to_csv(generate_tickets(1000, seed=11, id_prefix="N")))
    with timed("ingest, validate, curate", results, peak):
        ingestion = ingest_new_batches(resources, "night-at-scale")
    with timed("lexical fit (incremental)", results, peak):
        fit_lexical(resources.settings, ingestion.curated, ingestion.sources)
    production = Production(*read_production_pointer(store))
    eval_rows = split_rows(ingestion.curated, EVAL)
    # As production runs it: the fine-tune on the gpu pool scored the eval split where it trained ...
    on_gpu_pool = Resources(
        resources.settings.model_copy(update={"fine_tune_deployment": "fine-tune/gpu"}), store
    )
    key = challenger_predictions_key(on_gpu_pool, "night-gpu-pool")
    with timed("challenger's eval scoring where it trained (tiny model)", results, peak):
        record_eval_predictions(store, tiny_dir, ingestion.dataset_version, key, MAX_LENGTH)
    # ... and the run's cpu worker scores the champion on what is new to it, and decides.
    with timed("gate scoring on the cpu worker (tiny model: the plumbing)", results, peak):
        scores = score_both(
            on_gpu_pool, tiny_dir, eval_rows, ingestion, production, _progress("night-gpu-pool")
        )
    results["scored"] = {
        "eval_tickets": len(eval_rows),
        "sampling": scores.sampling.model_dump() if scores.sampling else None,
        "challenger_computed_where_trained": len(eval_rows),
        "challenger_computed": scores.challenger.scored,
        "champion_computed": scores.champion.scored,
        "champion_reused": scores.champion.reused,
        "label_check": _label_check(scores),
    }
    # An in-process run (no gpu pool) scores the challenger itself (the champion's are all known now).
    with timed("gate scoring in-process, challenger included (tiny model)", results, peak):
        scores = score_both(
            resources, tiny_dir, eval_rows, ingestion, production, _progress("night-in-process")
        )
    results["scored"]["challenger_computed_in_process"] = scores.challenger.scored
    with timed("publish (the real model folder)", results, peak):
        publish_model(store, real_dir, new_version_id(), {"benchmark": "at-scale"})
    with timed("forget one id", results, peak):
        record = forget([forget_id], "benchmark", resources=resources)
    results["forget_read"] = {
        "parts": record.curated.parts_read,
        "incoming": record.curated.incoming_read,
        "quarantine": record.quarantine.read,
        "incoming_listed": len(store.list_objects("incoming/")),
    }
    return results


def _progress(run_id: str) -> RunProgress:
    return RunProgress(run_id=run_id, forced_reason=None)


def _label_check(scores) -> dict:
    """What the label check scored with the champion beyond the eval split: tickets and seconds."""
    agreement = scores.agreement
    return (
        {"tickets": agreement.extra_predictions, "seconds": round(agreement.extra_seconds, 2)}
        if agreement
        else {}
    )


def write_table(results: dict, rate_s_per_ticket: float) -> None:
    """A Markdown table of the night at scale, with the real model's compute added to the plumbing."""
    scored = results["scored"]
    print("\n| stage | seconds | peak RSS (process) |\n|---|---|---|")
    for name, figures in results.items():
        if isinstance(figures, dict) and "seconds" in figures:
            print(f"| {name} | {figures['seconds']:,.1f} s | {figures['rss_peak_mb']:,.0f} MB |")
    sides = {
        "challenger's, where trained": scored["challenger_computed_where_trained"],
        "challenger's, in-process (bounded eval set)": scored["challenger_computed_in_process"],
        "champion's": scored["champion_computed"],
    }
    for side, tickets in sides.items():
        per_ticket = f"{tickets:,} tickets x {rate_s_per_ticket * 1000:.1f} ms"
        print(f"| {side} compute, real model ({per_ticket}) | {tickets * rate_s_per_ticket:,.1f} s | |")
    print(json.dumps(results, indent=2, default=str))
