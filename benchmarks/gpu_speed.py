"""Every speed ratio of the gpu pool's targets in one run: the project against the seed recipe, same
host, same process, same model (benchmarks/README.md, "On a GPU host").

1. Training on the NLBSE'24 issues, `--issues-train` x `--issues-epochs` (target >= 2x the seed's
   samples/s), and on `--tickets` generated tickets x `--tickets-epochs` (target >= 3x).
2. Scoring `--score` generated texts with the published form (transformer + lexical half) against the
   seed's `Trainer.predict` (target >= 3x), and the 1,500 issues as well.
3. The model FLOP utilisation of both trainings: useful model FLOPs (6 x non-embedding parameters x
   real tokens, plus attention) per second over the device's peak (`--peak-tflops`, bf16 dense).

It needs torch, transformers and the project's other dependencies (`benchmarks/gpu/run.sh` installs
them from a wheelhouse on a host without a package index) and only the base model's config and
tokenizer: `--random-init` trains a random copy, since speed does not depend on the weights. Runs on
a CPU too (small sizes), which is how it is tested before a GPU run.

    python benchmarks/gpu_speed.py --base-model DIR --random-init --data issues_train.csv --json OUT
"""

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from scoring_speed import measure, with_head, with_lexical_half
from train_speed import compare, split
from transformers import AutoConfig, AutoTokenizer

from app.samples import generate_tickets
from retrainer.core.base_models import resolve_base_model
from retrainer.core.devices import describe_device
from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

from baseline import issues_if_present, random_copy


def flops_per_sample(base_model: str, tokens: float) -> float:
    """Training FLOPs of one sample of `tokens` real tokens: forward and backward through the
    non-embedding weights (6 per weight per token) and attention (12 x layers x width x tokens per token)."""
    config = AutoConfig.from_pretrained(resolve_base_model(base_model))
    width, layers = config.hidden_size, config.num_hidden_layers
    per_layer = 4 * width * width + 2 * width * config.intermediate_size  # attention + feed-forward weights
    return tokens * (6 * layers * per_layer + 12 * layers * width * tokens)


def mean_tokens(base_model: str, texts: list[str], max_length: int = 128) -> float:
    """Real tokens per text after truncation to `max_length` (what the model computes on, padding aside)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return sum(lengths) / len(lengths)


def training_case(name, tickets, train, epochs, base_model, peak_flops) -> dict:
    """`train_speed.compare` on one dataset, with the model FLOP utilisation of both sides."""
    args = SimpleNamespace(train=train, test=min(300, len(tickets) - train), epochs=epochs)
    args.config = TrainingConfig(max_length=128)
    result = compare(name, tickets, args, base_model)
    train_rows, _ = split(tickets, args.train, args.test)
    per_sample = flops_per_sample(base_model, mean_tokens(base_model, train_rows["text"].tolist()))
    for side in ("seed", "project"):
        result[side]["mfu"] = result[side]["samples_per_s"] * per_sample / peak_flops
    print(
        f"  model FLOP utilisation: seed {result['seed']['mfu']:.2%}, project {result['project']['mfu']:.2%} "
        f"({per_sample / 1e9:.1f} GFLOP per sample, peak {peak_flops / 1e12:.0f} TFLOP/s)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
    parser.add_argument("--base-model", default=PACKAGED_BASE_MODEL)
    parser.add_argument(
        "--random-init", action="store_true", help="random weights of the base model's config"
    )
    parser.add_argument("--issues-train", type=int, default=1350)
    parser.add_argument("--issues-epochs", type=float, default=8.0)
    parser.add_argument("--tickets", type=int, default=100_000, help="generated tickets to train on")
    parser.add_argument("--tickets-epochs", type=float, default=1.0)
    parser.add_argument("--score", type=int, default=10_000, help="generated texts to score")
    parser.add_argument("--score-issues", type=int, default=1500, help="issues to score (the first ones)")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's bf16 dense peak")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    print(f"device: {describe_device()}; torch {torch.__version__}")
    results: dict = {"device": describe_device(), "training": [], "scoring": []}
    peak = args.peak_tflops * 1e12
    with tempfile.TemporaryDirectory(prefix="gpu-speed-") as scratch:
        base = random_copy(args.base_model, Path(scratch) / "base") if args.random_init else args.base_model
        issues = issues_if_present(args.data)
        if issues is not None:
            train = min(args.issues_train, len(issues) - 150)
            results["training"].append(
                training_case("NLBSE'24 issues", issues, train, args.issues_epochs, base, peak)
            )
        tickets = generate_tickets(args.tickets + 300, seed=11)
        results["training"].append(
            training_case("generated tickets", tickets, args.tickets, args.tickets_epochs, base, peak)
        )
        transformer = with_head(resolve_base_model(base), Path(scratch) / "transformer")
        published = with_lexical_half(
            transformer, Path(scratch) / "generated", generate_tickets(2000, seed=6)
        )
        texts = generate_tickets(args.score, seed=5)["text"].tolist()
        results["scoring"].append(measure("generated tickets", texts, transformer, published, 128))
        if issues is not None:
            published = with_lexical_half(transformer, Path(scratch) / "issues", issues.iloc[:1000])
            results["scoring"].append(
                measure(
                    "NLBSE'24 issues",
                    issues["text"].tolist()[: args.score_issues],
                    transformer,
                    published,
                    128,
                )
            )
    print("\nsummary (ratio = seed time / project time, same host and run)")
    for case in results["training"]:
        print(
            f"  training, {case['name']}, {case['train']} x {case['epochs']:g}: "
            f"{case['training_ratio']:.2f}x "
            f"({case['seed']['samples_per_s']:.0f} -> {case['project']['samples_per_s']:.0f} samples/s; "
            f"MFU {case['seed']['mfu']:.2%} -> {case['project']['mfu']:.2%})"
        )
    for case in results["scoring"]:
        print(f"  scoring, published form, {case['texts']} {case['name']}: {case['published_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
