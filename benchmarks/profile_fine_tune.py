"""Where the time of one fine-tune and one scoring pass goes, phase by phase, on this machine (CPU or GPU).

Trains once with the product's `fine_tune` (the device's recipe, `TrainingConfig.for_device`), its
checkpoints handed to the product's background upload into a local-directory store (what a GPU host
without S3 uses), and reads the phases `fine_tune` records in ``training.json``: model load, checkpoint
restore, text preparation and tokenisation, training steps, evaluation, checkpoint saves, the end of
the loop (waiting for uploads), averaging, saving, calibration and the lexical half's fit (on a GPU it
runs on the CPU while the GPU trains, so only the wait for it counts). Then scores held-out texts
with the published model the way `predict_probabilities` does, split into loading, text preparation,
the transformer's forward passes, and the lexical half (masking, hashing, regression).

    .venv/bin/python benchmarks/profile_fine_tune.py [--data PATH] [--train 1350 --epochs 8 --score 1500]
    .venv/bin/python benchmarks/profile_fine_tune.py --base-model DIR --random-init   # weights not needed
    .venv/bin/python benchmarks/profile_fine_tune.py --preset large --base-model DIR  # MPNet, 256 tokens

Without the NLBSE'24 issues (`--data`, see benchmarks/README.md) it uses generated tickets.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from app.samples import generate_tickets
from retrainer.core.devices import describe_device, inference_device
from retrainer.core.scoring import load_classifier, load_lexical_half
from retrainer.core.text import InputRecipe, encode, prepare_texts
from retrainer.core.training import RunOptions, TrainingSpec, fine_tune, training_record
from retrainer.settings import (
    TRAINING_PRESETS,
    S3Settings,
    TrainingConfig,
    preset_base_model,
)
from retrainer.storage import open_store
from tasks.checkpoints import CheckpointSync

from baseline import issues_if_present, random_copy


def profile_training(
    train, validation, base_model: str, config: TrainingConfig, workdir: Path
) -> tuple[dict, Path]:
    """Seconds per phase of one `fine_tune` with checkpoints uploaded to a local-directory store, and
    the model folder."""
    store = open_store(S3Settings(endpoint_url=(workdir / "store").as_uri(), bucket="profile"))
    store.ensure_bucket()
    options = RunOptions(checkpoints=CheckpointSync(store, "runs/checkpoints/profile/"))
    started = time.perf_counter()
    model_dir = fine_tune(
        train, validation, TrainingSpec(base_model, "main", config), workdir / "run", options=options
    )
    total = time.perf_counter() - started
    record = training_record(model_dir)
    phases = dict(record["seconds"])
    phases["other"] = max(0.0, total - sum(phases.values()))
    return {"total": total, "phases": phases, "record": record}, model_dir


def profile_scoring(model_dir: Path, texts: list[str], batch_size: int = 64) -> dict:
    """Seconds per phase of scoring `texts` as `predict_probabilities` does (same batching)."""
    phases: dict[str, float] = {}

    def timed(name, work):
        started = time.perf_counter()
        result = work()
        if inference_device().type == "cuda":
            torch.cuda.synchronize()
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
        return result

    tokenizer, model = timed("load_transformer", lambda: load_classifier(model_dir))
    recipe = InputRecipe.of_model(model_dir, 128)
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = [texts[index] for index in order[start : start + batch_size]]
            timed("clean_and_mask", lambda chunk=chunk: prepare_texts(chunk, tokenizer, recipe))
            encoded = timed(
                "prepare_and_tokenize",
                lambda chunk=chunk: encode(chunk, tokenizer, recipe, padding=True, return_tensors="pt"),
            )
            timed("transformer_forward", lambda e=encoded: model(**e.to(model.device)).logits.float().cpu())
    # text preparation is inside tokenisation; shown apart, so subtract it once
    phases["tokenize"] = max(0.0, phases.pop("prepare_and_tokenize") - phases["clean_and_mask"])
    lexical = timed("load_lexical", lambda: load_lexical_half(model_dir))
    if lexical is not None:
        timed("lexical_half", lambda: lexical.probabilities(texts))
    return {"texts": len(texts), "total": sum(phases.values()), "phases": phases}


def print_table(title: str, profile: dict) -> None:
    print(f"\n{title}: {profile['total']:.2f}s")
    print("| phase | seconds | share |\n|---|---|---|")
    for name, seconds in sorted(profile["phases"].items(), key=lambda item: -item[1]):
        print(f"| {name} | {seconds:.2f} | {seconds / profile['total']:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
    parser.add_argument("--train", type=int, default=1350)
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--score", type=int, default=1500, help="texts to score")
    parser.add_argument("--preset", default="tuned", choices=sorted(TRAINING_PRESETS), help="training recipe")
    parser.add_argument("--base-model", help="default: the preset's own base model, else the packaged one")
    parser.add_argument(
        "--random-init", action="store_true", help="random weights of the base model's config"
    )
    parser.add_argument("--json", type=Path, help="also write the profile here")
    args = parser.parse_args()
    tickets = issues_if_present(args.data)
    source = "NLBSE'24 issues"
    if tickets is None:
        tickets, source = generate_tickets(args.train + 150, seed=3), "generated tickets"
    tickets = tickets.sample(frac=1.0, random_state=0).reset_index(drop=True)
    validation_size = max(1, args.train // 9)  # the flow's validation share of the curated data
    train, validation = tickets.iloc[: args.train], tickets.iloc[args.train : args.train + validation_size]
    config = TRAINING_PRESETS[args.preset].model_copy(update={"num_train_epochs": args.epochs})
    args.base_model = args.base_model or preset_base_model(args.preset)[0]
    device_config = config.for_device(torch.cuda.is_available())
    print(
        f"{describe_device()}: {args.preset} recipe, {len(train)} {source} x {args.epochs:g} epochs, batch "
        f"{device_config.per_device_train_batch_size}, lr {device_config.learning_rate:.2e}"
    )
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        workdir = Path(scratch)
        base_model = random_copy(args.base_model, workdir / "base") if args.random_init else args.base_model
        training, model_dir = profile_training(train, validation, base_model, config, workdir)
        samples = len(train) * args.epochs
        print_table(f"fine-tune ({samples / training['total']:.1f} samples/s end to end)", training)
        scoring = profile_scoring(model_dir, tickets["text"].tolist()[: args.score])
        print_table(f"scoring {scoring['texts']} texts, published form", scoring)
    if args.json:
        args.json.write_text(
            json.dumps({"device": describe_device(), "training": training, "scoring": scoring})
        )


if __name__ == "__main__":
    main()
