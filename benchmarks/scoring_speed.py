"""Scoring speed: the project's scorer vs the seed's way (Trainer.predict, padding to max length, fp32).

Both score the same texts with the same model in one process, each warmed up once and then timed
from loading the model; prints seconds, texts/s, the ratio, and how often the two agree on the
predicted label. Then the project's scorer on the model as published (with its lexical half, which
the seed's models did not have) and its ratio to the seed's.
Run: `.venv/bin/python benchmarks/scoring_speed.py [--data PATH/issues_train.csv]` (the NLBSE'24 issues'
case is skipped without them; see benchmarks/README.md).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.samples import generate_tickets
from retrainer.core.base_models import resolve_base_model
from retrainer.core.devices import cpu_supports_bf16
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.lexical import fit_lexical_half, save_lexical_half
from retrainer.core.scoring import predict_probabilities
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

from baseline import issues_if_present, seed_predict


def seed_scoring(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """The seed's scoring run: load the model, then `Trainer.predict` on max-length-padded texts."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return seed_predict(model, tokenizer, texts, max_length)


def project_scoring(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """The project's scoring run (`predict_probabilities` loads the model itself)."""
    return predict_probabilities(Path(model_dir), texts, max_length).argmax(dim=-1).numpy()


def timed(scorer, model_dir: str, texts: list[str], max_length: int) -> tuple[np.ndarray, float]:
    """A scorer's labels and its seconds, loading included."""
    started = time.perf_counter()
    labels = scorer(model_dir, texts, max_length)
    return labels, time.perf_counter() - started


def measure(name: str, texts: list[str], model_dir: str, published_dir: str, max_length: int) -> dict:
    """The seed's scorer and the project's on the transformer, and the project's on the published form
    (`published_dir`: the same transformer with a lexical half); prints and returns the seconds."""
    runs = [(seed_scoring, model_dir), (project_scoring, model_dir), (project_scoring, published_dir)]
    for scorer, folder in runs:  # warm-up: one-time start-up costs count for none
        scorer(folder, texts[:8], max_length)
    (baseline, seed_seconds), (ours, our_seconds), (_, published_seconds) = (
        timed(scorer, folder, texts, max_length) for scorer, folder in runs
    )
    print(f"{name}: {len(texts)} texts, max_length {max_length}")
    seed_rate = len(texts) / seed_seconds
    print(f"  seed (Trainer.predict, max-length padding, fp32): {seed_seconds:6.2f}s  {seed_rate:7.1f}/s")
    print(
        f"  project (length-sorted batches, inference_mode{', bf16' if cpu_supports_bf16() else ''}): "
        f"{our_seconds:6.2f}s  {len(texts) / our_seconds:7.1f}/s"
    )
    print(
        f"  ratio: {seed_seconds / our_seconds:.2f}x; same label on {np.mean(baseline == ours):.1%} of texts"
    )
    print(
        f"  project, published form (+ lexical half): {published_seconds:6.2f}s "
        f"{len(texts) / published_seconds:7.1f}/s; ratio {seed_seconds / published_seconds:.2f}x"
    )
    return {
        "name": name,
        "texts": len(texts),
        "seed_s": seed_seconds,
        "transformer_s": our_seconds,
        "published_s": published_seconds,
        "published_ratio": seed_seconds / published_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--data", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = resolve_base_model(PACKAGED_BASE_MODEL)
    # Both scorers load the same folder; the classifier head is fresh but seeded identically per load.
    tickets = generate_tickets(args.count, seed=5)["text"].tolist()
    with tempfile.TemporaryDirectory(prefix="scoring-bench-model-") as scratch:
        transformer = with_head(model_dir, Path(scratch) / "transformer")
        # The lexical half is fitted on other texts of the same kind: its vocabulary sets its cost.
        published = with_lexical_half(transformer, Path(scratch) / "generated", generate_tickets(600, seed=6))
        measure("generated tickets", tickets, transformer, published, 128)
        if (issues := issues_if_present(args.data)) is not None:
            published = with_lexical_half(transformer, Path(scratch) / "issues", issues.iloc[args.count :])
            measure(
                "NLBSE'24 GitHub issues",
                issues.head(args.count)["text"].tolist(),
                transformer,
                published,
                128,
            )


def with_head(model_dir: str, target: Path) -> str:
    """Save the base model with a fixed (seeded) classification head, so both scorers use one model."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=LABEL_TO_ID,
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return str(target)


def with_lexical_half(model_dir: str, target: Path, tickets: pd.DataFrame) -> str:
    """A copy of `model_dir` with a lexical half fitted on `tickets` (text, label), as published."""
    shutil.copytree(model_dir, target)
    save_lexical_half(fit_lexical_half(tickets, TrainingConfig().lexical_weight), target)
    return str(target)


if __name__ == "__main__":
    main()
