"""A 5-fold sweep of fine-tuning recipes on one GPU, many runs at once: which recipe changes are worth
confirming with `benchmarks/quality.py` (the product's own code, on CPU).

Why a separate loop: the product's `fine_tune` needs the Trainer, datasets, Prefect and S3 around
it, and one MiniLM run leaves an H100 almost idle. This script mirrors that recipe in a plain PyTorch
loop (AdamW without decay on biases and LayerNorms, linear warm-up and decay, gradient-norm clip 1.0,
bf16 autocast, length-grouped batches, the base model's dropout, the classification head drawn from
the seed) and runs several trainings side by side on one GPU. The text is the product's: `prep`
encodes the issues with `retrainer.text.encode` on this machine, so the GPU machine needs only torch
and transformers (and this checkout on PYTHONPATH: the weights are averaged by `retrainer.weights`, as
in the product). Each run scores every epoch and the mean weights of its last K epochs (every K) on
its test fold, so one training answers "best epoch, last epoch or mean of the last K".

    .venv/bin/python benchmarks/recipe_sweep.py prep                  # here: token ids, folds, fp16 model
    PYTHONPATH=. python3 benchmarks/recipe_sweep.py run --set lengths --out OUT  # there, .bench/sweep carried
    .venv/bin/python benchmarks/recipe_sweep.py summary OUT/results.jsonl

The folds are `benchmarks/quality.py --folds 5`'s (same seed), each training on 90% of the other
folds, as there. The base model travels as fp16 safetensors (the device's 64 MiB limit); it is
loaded back into float32.
"""

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retrainer.weights import mean_weights

SWEEP_DIR = Path(".bench/sweep")
INPUTS = {
    # name: (token budget, head share, text)
    "128": (128, 0.5, "text"),
    "256": (256, 0.5, "text"),
    "384": (384, 0.5, "text"),
    "512": (512, 0.5, "text"),
    "256-head75": (256, 0.75, "text"),
    "128-repo": (128, 0.5, "repo"),
    "256-repo": (256, 0.5, "repo"),
    "128-title": (128, 0.5, "title"),
}
"""Encoded inputs: the product's text preparation at a token budget, of the issue as the product
reads it (``text``), with the repository's name first (``repo``) or the title alone (``title``)."""


def recipe(name, inputs="256", lr=1e-4, epochs=5, batch=16, seeds=(42,), soup=False, pool="cls", **rest):
    """One configuration; `soup` runs reuse seed 42's head and average their weights with its run."""
    return dict(
        name=name, inputs=inputs, lr=lr, epochs=epochs, batch=batch, seeds=list(seeds), soup=soup,
        pool=pool, weight_decay=rest.get("weight_decay", 0.01), warmup=rest.get("warmup", 0.1),
        freeze_embeddings=rest.get("freeze_embeddings", False), rows=None,
    )  # fmt: skip


SETS = {
    "lengths": [
        recipe("L128", inputs="128"),
        recipe("L256"),
        recipe("L512", inputs="512"),
        recipe("L384", inputs="384"),
        recipe("L256-E8", epochs=8),
        recipe("L256-lr2e-4", lr=2e-4),
        recipe("L256-lr5e-5-E10", lr=5e-5, epochs=10),
        recipe("L256-bs32-lr1.5e-4-E6", batch=32, lr=1.5e-4, epochs=6),
        recipe("L256-head75", inputs="256-head75"),
        recipe("L512-E8", inputs="512", epochs=8),
        recipe("L256", seeds=(7, 1), soup=True),
        recipe("L128", inputs="128", seeds=(7, 1), soup=True),
        recipe("L512", inputs="512", seeds=(7, 1), soup=True),
    ],
    "inputs": [
        recipe("L128-repo", inputs="128-repo"),
        recipe("L128-meanpool", inputs="128", pool="mean"),
        recipe("L256-repo", inputs="256-repo"),
        recipe("L128-title", inputs="128-title"),
        recipe("L128-repo-s7", inputs="128-repo", seeds=(7,)),
        recipe("L128-meanpool-s7", inputs="128", pool="mean", seeds=(7,)),
        recipe("L128-repo-meanpool", inputs="128-repo", pool="mean"),
        recipe("L128-freeze-emb", inputs="128", freeze_embeddings=True),
        recipe("L128-repo-s1", inputs="128-repo", seeds=(1,)),
        recipe("L256-meanpool", inputs="256", pool="mean"),
        recipe("L128-repo-E8", inputs="128-repo", epochs=8),
    ],
    "epochs": [
        recipe("L128-E8", inputs="128", epochs=8),
        recipe("L128-E8-s7", inputs="128", epochs=8, seeds=(7,)),
        recipe("L128-E8-s1", inputs="128", epochs=8, seeds=(1,)),
        recipe("L256-E8-s7", epochs=8, seeds=(7,)),
        recipe("L128-E12", inputs="128", epochs=12),
        recipe("L256-E8-s1", epochs=8, seeds=(1,)),
        recipe("L128-E12-s7", inputs="128", epochs=12, seeds=(7,)),
    ],
}
"""The three sweeps run on an H100 (results in the README's *Model quality*)."""
SMOKE_EPOCHS = 2


# ---- prep (here: the product's text preparation) -------------------------------------------------


def prepare(out: Path) -> None:
    """Token ids of every input variant, the 5 folds of quality.py, and the base model in fp16."""
    from quality import SPLIT_SEED, VALIDATION_SHARE, stratified_folds, stratified_split
    from transformers import AutoModel, AutoTokenizer

    from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig
    from retrainer.text import encode
    from tasks.train import LABEL_TO_ID, resolve_base_model

    from baseline import config_with, load_issues

    issues = load_issues().reset_index(drop=True)
    folds = []
    for rest, test in stratified_folds(issues, 5, SPLIT_SEED):
        train, validation = stratified_split(rest, VALIDATION_SHARE, SPLIT_SEED)
        folds.append(
            {"train": list(train.index), "validation": list(validation.index), "test": list(test.index)}
        )
    texts = {
        "text": issues["text"].tolist(),
        "repo": [
            f"{repo.split('/')[-1]}: {text}"
            for repo, text in zip(issues["repo"], issues["text"], strict=True)
        ],
        "title": [text.partition("\n")[0] for text in issues["text"]],
    }
    source = resolve_base_model(PACKAGED_BASE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(source)
    input_ids = {
        name: encode(
            texts[text], tokenizer, config_with(f"max_length={length},head_share={head}").input_recipe()
        )["input_ids"]
        for name, (length, head, text) in INPUTS.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    data = {"labels": [LABEL_TO_ID[label] for label in issues["label"]], "repo": issues["repo"].tolist()}
    epoch_counts = {SMOKE_EPOCHS} | {config["epochs"] for configs in SETS.values() for config in configs}
    data["averaged_epochs"] = {  # the product's rule, for the mirror loop (no pydantic there)
        str(epochs): TrainingConfig(num_train_epochs=epochs).averaged_epochs() for epochs in epoch_counts
    }
    (out / "data.json").write_text(json.dumps(data | {"folds": folds, "input_ids": input_ids}))
    AutoModel.from_pretrained(source).half().save_pretrained(out / "model")
    print(f"wrote {out}: {len(issues)} issues, inputs {', '.join(INPUTS)}")


# ---- run (the GPU machine: torch and transformers only) ------------------------------------------

DATA: dict = {}
"""The prepared data, loaded once per worker process."""


def start_worker(folder: str, threads: int) -> None:
    """Load the prepared data; share the cores between workers (oversubscribed threads spin-wait)."""
    torch.set_num_threads(threads)
    DATA.update(json.loads((Path(folder) / "data.json").read_text()), folder=folder)


def grouped_order(lengths: list[int], batch: int, generator: torch.Generator) -> list[int]:
    """The Trainer's length-grouped order: random megabatches of 50 batches, each longest first."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = 50 * batch
    megabatches = [order[start : start + size] for start in range(0, len(order), size)]
    return [i for megabatch in megabatches for i in sorted(megabatch, key=lambda j: -lengths[j])]


def padded(ids: list[list[int]], rows: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of `rows`, padded to the longest of them (the pad id is 0)."""
    longest = max(len(ids[row]) for row in rows)
    input_ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(ids[row])] = torch.tensor(ids[row])
        mask[i, : len(ids[row])] = 1
    return input_ids.to(device), mask.to(device)


def logits_of(model, input_ids: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """BERT's [CLS] pooler head (the product's), or mean pooling over the tokens (``mean``: how
    all-MiniLM-L6-v2 was trained for sentence embeddings)."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16):
        if pool == "cls":
            return model(input_ids=input_ids, attention_mask=mask).logits.float()
        hidden = model.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return model.classifier(model.dropout((hidden * weights).sum(1) / weights.sum(1))).float()


@torch.no_grad()
def predict(model, ids: list[list[int]], rows: list[int], pool: str) -> np.ndarray:
    """Class probabilities of `rows`, scored in batches of similar length."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(ids[rows[i]]))
    probabilities = np.zeros((len(rows), 3), dtype=np.float32)
    for start in range(0, len(order), 128):
        chunk = order[start : start + 128]
        logits = logits_of(model, *padded(ids, [rows[i] for i in chunk], device), pool)
        probabilities[chunk] = torch.softmax(logits, -1).cpu().numpy()
    model.train()
    return probabilities


def base_model(seed: int, head_seed: int, device: torch.device):
    """The base model with a new head drawn from `head_seed`; dropout then follows `seed`."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(head_seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(DATA["folder"]) / "model"), num_labels=3, dtype=torch.float32
    )
    set_seed(seed)
    return model.to(device)


def optimizer_for(model, config: dict) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it: no weight decay on biases and LayerNorm weights."""
    if config["freeze_embeddings"]:
        model.bert.embeddings.requires_grad_(False)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    exempt = [p for name, p in trained if "bias" in name or "LayerNorm" in name]
    decayed = [p for name, p in trained if not ("bias" in name or "LayerNorm" in name)]
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": config["weight_decay"]},
            {"params": exempt, "weight_decay": 0.0},
        ],
        lr=config["lr"],
        fused=next(model.parameters()).is_cuda,
    )


def train_run(config: dict, fold: int, seed: int, device: torch.device) -> tuple[dict, dict]:
    """One training on one fold: (result row, the mean weights the product's default would publish)."""
    from transformers import get_linear_schedule_with_warmup

    ids, labels, split = DATA["input_ids"][config["inputs"]], DATA["labels"], DATA["folds"][fold]
    train, validation, test = (
        spread(split[part], config["rows"]) for part in ("train", "validation", "test")
    )
    model = base_model(seed, 42 if config["soup"] else seed, device)
    optimizer = optimizer_for(model, config)
    total = math.ceil(len(train) / config["batch"]) * config["epochs"]
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config["warmup"] * total), total)
    generator = torch.Generator().manual_seed(seed)
    snapshots, epoch_validation, epoch_test = [], [], []
    started = time.perf_counter()
    model.train()
    for _ in range(config["epochs"]):
        order = grouped_order([len(ids[row]) for row in train], config["batch"], generator)
        for start in range(0, len(order), config["batch"]):
            batch = [train[i] for i in order[start : start + config["batch"]]]
            logits = logits_of(model, *padded(ids, batch, device), config["pool"])
            target = torch.tensor([labels[row] for row in batch], device=device)
            torch.nn.functional.cross_entropy(logits, target).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        snapshots.append({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        epoch_validation.append(predict(model, ids, validation, config["pool"]))
        epoch_test.append(predict(model, ids, test, config["pool"]))
    seconds = time.perf_counter() - started
    mean_of_last, default = {}, DATA["averaged_epochs"][str(config["epochs"])]
    for count in range(1, config["epochs"] + 1):
        model.load_state_dict(mean_weights(snapshots[-count:]))
        mean_of_last[count] = predict(model, ids, test, config["pool"])
    model.load_state_dict(mean_weights(snapshots[-default:]))
    row = {
        "config": config["name"], "fold": fold, "seed": seed, "train_s": seconds, "test": test,
        "epoch_validation_accuracy": [accuracy(p, validation) for p in epoch_validation],
        "epoch_test": [p.argmax(-1).tolist() for p in epoch_test],
        "mean_of_last_test": {count: p.argmax(-1).tolist() for count, p in mean_of_last.items()},
        "default_count": default,
        "default_probabilities": np.round(mean_of_last[default], 4).tolist(),
    }  # fmt: skip
    return row, model.state_dict()


def spread(rows: list[int], count: int | None) -> list[int]:
    """`count` of `rows`, evenly spaced (so every repository and label, as the issues are ordered)."""
    return rows if count is None else rows[:: max(1, len(rows) // count)][:count]  # None: all


def accuracy(probabilities: np.ndarray, rows: list[int]) -> float:
    return float(np.mean(probabilities.argmax(-1) == np.array([DATA["labels"][row] for row in rows])))


def run_job(job: tuple[dict, int, str]) -> list[dict]:
    """Every seed of one configuration on one fold; a soup job also scores the mean of its seeds'
    weights and seed 42's (saved by the plain job of the same configuration)."""
    config, fold, weights_dir = job
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, states = [], []
    for seed in config["seeds"]:
        row, state = train_run(config, fold, seed, device)
        rows.append(row)
        states.append(state)
        if not config["soup"]:  # scratch weights for a later soup job, on the GPU machine only
            target = Path(weights_dir) / f"{config['name']}-{fold}-{seed}.pt"
            torch.save({name: t.cpu() for name, t in state.items()}, target.with_suffix(".tmp"))
            os.replace(target.with_suffix(".tmp"), target)
    if config["soup"]:
        first = Path(weights_dir) / f"{config['name']}-{fold}-42.pt"
        while not first.exists():  # queued before this job, so at most one training away
            time.sleep(1)
        states.append({name: t.to(device) for name, t in torch.load(first).items()})
        model = base_model(42, 42, device)
        model.load_state_dict(mean_weights(states))
        test = rows[0]["test"]
        soup = predict(model, DATA["input_ids"][config["inputs"]], test, config["pool"])
        rows.append({"config": f"{config['name']}-soup{len(states)}", "fold": fold, "seed": -1, "test": test,
                     "soup_test": soup.argmax(-1).tolist()})  # fmt: skip
    return rows


def run(data: Path, set_name: str, out: Path, workers: int, deadline_s: float, smoke: bool) -> None:
    """All jobs of a set, `workers` processes sharing the GPU; rows appended to out/results.jsonl
    as they finish, so a run cut short still reports what it finished."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    weights_dir = tempfile.mkdtemp(prefix="recipe-sweep-")  # scratch for soups; not sent back
    folds = [0] if smoke else range(5)
    configs = [dict(c, epochs=SMOKE_EPOCHS, rows=32) if smoke else c for c in SETS[set_name]]
    jobs = [(config, fold, weights_dir) for config in configs for fold in folds]
    print(f"{len(jobs)} jobs, {workers} workers, cuda={torch.cuda.is_available()}", flush=True)
    pool = multiprocessing.get_context("spawn").Pool(
        workers, initializer=start_worker, initargs=(str(data), max(1, (os.cpu_count() or 1) // workers))
    )
    pending = pool.imap_unordered(run_job, jobs)
    try:
        for _ in jobs:
            rows = pending.next(timeout=max(1.0, deadline_s - (time.perf_counter() - started)))
            with (out / "results.jsonl").open("a") as results:
                results.writelines(json.dumps(row) + "\n" for row in rows)
            first = rows[0]
            print(f"{time.perf_counter() - started:5.0f}s {first['config']} fold {first['fold']} "
                  f"trained in {first['train_s']:.1f}s", flush=True)  # fmt: skip
    except multiprocessing.TimeoutError:
        print(f"deadline of {deadline_s:.0f}s reached: the rows above are all there is", flush=True)
    pool.terminate()
    shutil.rmtree(weights_dir, ignore_errors=True)


# ---- summary (here: the product's metrics) --------------------------------------------------------


def summarise(result_files: list[Path], data: Path) -> None:
    """Out-of-fold macro-F1 per configuration, seed and choice of published weights (the product's
    default mean of the last epochs, the best epoch by validation accuracy, the last epoch, a soup)."""
    from tasks.evaluate import evaluation_report

    labels = json.loads((data / "data.json").read_text())["labels"]
    table: dict[tuple, dict[int, int]] = {}
    for path in result_files:
        for row in map(json.loads, path.read_text().splitlines()):
            for variant, predicted in variants(row).items():
                table.setdefault((row["config"], row["seed"], variant), {}).update(
                    zip(row["test"], predicted, strict=True)
                )
    print(f"{'configuration':26} {'seed':>4} {'weights':16} {'issues':>6} {'macro-F1':>8}")
    for (config, seed, variant), predicted in sorted(table.items()):
        rows = sorted(predicted)
        f1 = evaluation_report([predicted[r] for r in rows], [labels[r] for r in rows]).macro_f1
        print(f"{config:26} {seed:4} {variant:16} {len(rows):6} {f1:8.3f}")


def variants(row: dict) -> dict[str, list[int]]:
    """A result row's test predictions by choice of weights."""
    if "soup_test" in row:
        return {"soup": row["soup_test"]}
    best = int(np.argmax(row["epoch_validation_accuracy"]))
    return {
        f"default(mean {row['default_count']})": row["mean_of_last_test"][str(row["default_count"])],
        "best epoch": row["epoch_test"][best],
        "last epoch": row["epoch_test"][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prep", help="encode the issues and convert the base model (here)")
    prep.add_argument("--out", type=Path, default=SWEEP_DIR)
    sweep = commands.add_parser("run", help="train one set of configurations (the GPU machine)")
    sweep.add_argument("--data", type=Path, default=SWEEP_DIR)
    sweep.add_argument("--set", choices=sorted(SETS), required=True)
    sweep.add_argument("--out", type=Path, required=True)
    sweep.add_argument("--workers", type=int, default=6)
    sweep.add_argument("--deadline", type=float, default=400.0, help="seconds; stop waiting after this")
    sweep.add_argument("--smoke", action="store_true", help="every recipe on 32 issues of one fold, 2 epochs")
    summary = commands.add_parser("summary", help="out-of-fold macro-F1 of result files (here)")
    summary.add_argument("results", type=Path, nargs="+")
    summary.add_argument("--data", type=Path, default=SWEEP_DIR)
    args = parser.parse_args()
    if args.command == "prep":
        prepare(args.out)
    elif args.command == "run":
        run(args.data, args.set, args.out, args.workers, args.deadline, args.smoke)
    else:
        summarise(args.results, args.data)


if __name__ == "__main__":
    sys.exit(main())
