"""A 5-fold sweep of fine-tuning recipes on one GPU, many runs at once: which recipe changes are worth
confirming with `benchmarks/quality.py` (the product's own code, on CPU).

Why a separate loop: the product's `fine_tune` needs the Trainer, datasets, Prefect and S3 around
it, and one MiniLM run leaves an H100 almost idle. This script mirrors that recipe in a plain PyTorch
loop (AdamW without decay on biases and LayerNorms, linear warm-up and decay, gradient-norm clip 1.0,
bf16 autocast, length-grouped batches, the base model's dropout, the classification head drawn from
the seed) and runs several trainings side by side on one GPU. The text is the product's: `prep`
encodes the issues with `retrainer.core.text.encode` on this machine, so the GPU machine needs only torch
and transformers (and this checkout on PYTHONPATH: the weights are averaged by `retrainer.core.weights`, as
in the product). Each run scores every epoch and the mean weights of its last K epochs (every K) on
its test fold, so one training answers "best epoch, last epoch or mean of the last K".

    # here: token ids, folds, fp16 model
    .venv/bin/python benchmarks/experiments/recipe_sweep.py prep [--issues PATH]
    # there, .bench/sweep carried
    PYTHONPATH=. python3 benchmarks/experiments/recipe_sweep.py run --set lengths --out OUT
    .venv/bin/python benchmarks/experiments/recipe_sweep.py summary OUT/results.jsonl
    # + lexical
    .venv/bin/python benchmarks/experiments/recipe_sweep.py summary OUT/results.jsonl --blend 0 0.5 0.6 1

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

from retrainer.core.weights import mean_weights

# quality.py and baseline.py are imported from benchmarks/, this folder's parent, whatever the working
# directory (spawned workers get this sys.path too).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

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
    """One configuration; `soup` runs reuse seed 42's head and average their weights with its run.
    `adapt_epochs`: masked-language-model epochs on the training texts before fine-tuning
    (task-adaptive pre-training); `rdrop`: weight of R-Drop's consistency loss (two dropout passes);
    `supcon`: share of a supervised contrastive loss on the pooled embedding; `layer_decay`: each
    layer's learning rate that factor of the one above (the head and pooler at `lr`); `reinit_layers`:
    the top encoder layers and the pooler drawn anew (Zhang et al., 2021); `label_smoothing`;
    `head_epochs`: epochs training the head alone (lr 1e-3) before fine-tuning (LP-FT, Kumar et al., 2022);
    `train_share`: the share of each fold's training issues used (a learning curve)."""
    return dict(
        name=name, inputs=inputs, lr=lr, epochs=epochs, batch=batch, seeds=list(seeds), soup=soup,
        pool=pool, weight_decay=rest.get("weight_decay", 0.01), warmup=rest.get("warmup", 0.1),
        freeze_embeddings=rest.get("freeze_embeddings", False), rows=None,
        adapt_epochs=rest.get("adapt_epochs", 0), rdrop=rest.get("rdrop", 0.0),
        supcon=rest.get("supcon", 0.0), split=rest.get("split"), layer_decay=rest.get("layer_decay", 1.0),
        reinit_layers=rest.get("reinit_layers", 0), label_smoothing=rest.get("label_smoothing", 0.0),
        head_epochs=rest.get("head_epochs", 0), train_share=rest.get("train_share", 1.0),
    )  # fmt: skip


OTHER_SPLIT_SEEDS = (7, 99)
"""Fold seeds besides quality.py's (a recipe's ``split``): folds no choice was made on."""
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
    "ideas": [
        recipe(f"{name}-s{seed}", inputs="128", epochs=8, seeds=(seed,), **changes)
        for seed in (42, 7, 1)
        for name, changes in [
            ("E8", {}),
            ("E8-adapt10", {"adapt_epochs": 10}),
            ("E8-rdrop1", {"rdrop": 1.0}),
            ("E8-supcon0.3", {"supcon": 0.3}),
            ("E8-adapt25", {"adapt_epochs": 25}),
        ]
    ],
    "splits": [
        recipe(f"E8-split{split}-s{seed}", inputs="128", epochs=8, seeds=(seed,), split=split)
        for split in OTHER_SPLIT_SEEDS
        for seed in (42, 7, 1)
    ],
    "calibration": [  # the default on all three partitions, saving logits to calibrate the blend
        recipe(f"E8-split{split or 'default'}-s{seed}", inputs="128", epochs=8, seeds=(seed,), split=split)
        for split in (None, *OTHER_SPLIT_SEEDS)
        for seed in (42, 7, 1)
    ],
    "finetuning": [  # remedies for fine-tuning on little data, against the default in the same run
        recipe(f"{name}-s{seed}", inputs="128", epochs=8, seeds=(seed,), **changes)
        for seed in (42, 7, 1)
        for name, changes in [
            ("E8", {}),
            ("E8-llrd0.8", {"layer_decay": 0.8}),
            ("E8-llrd0.8-lr2e-4", {"layer_decay": 0.8, "lr": 2e-4}),
            ("E8-reinit1", {"reinit_layers": 1}),
            ("E8-ls0.1", {"label_smoothing": 0.1}),
            ("E8-lpft3", {"head_epochs": 3}),
        ]
    ],
    "learning": [  # the default on a share of each fold's training issues (validation and test whole)
        recipe(f"E8-train{share}-s{seed}", inputs="128", epochs=8, seeds=(seed,), train_share=share)
        for seed in (42, 7, 1)
        for share in (0.25, 0.5, 0.75)
    ],
}
"""The sweeps run on an H100 (`lengths`, `inputs`, `epochs`) and an H200 (`ideas`, `splits`,
`calibration`, `finetuning`, `learning`); results in docs/experiments/."""
SMOKE_EPOCHS = 2


# ---- prep (here: the product's text preparation) -------------------------------------------------


def prepare(out: Path, issues_file: Path | None) -> None:
    """Token ids of every input variant, the 5 folds of quality.py, and the base model in fp16."""
    from quality import SPLIT_SEED, VALIDATION_SHARE, stratified_folds, stratified_split
    from transformers import AutoModel, AutoTokenizer

    from retrainer.core.base_models import resolve_base_model
    from retrainer.core.labels import LABEL_TO_ID
    from retrainer.core.text import encode
    from retrainer.settings import PACKAGED_BASE_MODEL, TrainingConfig

    from baseline import NLBSE, config_with, load_issues

    issues = load_issues(issues_file or NLBSE, "--issues").reset_index(drop=True)
    folds = {  # quality.py's folds, and others drawn the same way to check a choice made on those
        str(seed): [
            {"train": list(train.index), "validation": list(validation.index), "test": list(test.index)}
            for rest, test in stratified_folds(issues, 5, seed)
            for train, validation in [stratified_split(rest, VALIDATION_SHARE, seed)]
        ]
        for seed in (SPLIT_SEED, *OTHER_SPLIT_SEEDS)
    }
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
    data = {
        "labels": [LABEL_TO_ID[label] for label in issues["label"]],
        "repo": issues["repo"].tolist(),
        "tokens": {
            "special": tokenizer.all_special_ids,
            "mask": tokenizer.mask_token_id,
            "vocab": len(tokenizer),
        },
    }
    epoch_counts = {SMOKE_EPOCHS} | {config["epochs"] for configs in SETS.values() for config in configs}
    data["averaged_epochs"] = {  # the product's rule, for the mirror loop (no pydantic there)
        str(epochs): TrainingConfig(num_train_epochs=epochs).averaged_epochs() for epochs in epoch_counts
    }
    data |= {"folds": folds, "default_split": str(SPLIT_SEED), "input_ids": input_ids}
    (out / "data.json").write_text(json.dumps(data))
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


def forward(
    model, input_ids: torch.Tensor, mask: torch.Tensor, pool: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the pooled embedding the head reads): BERT's [CLS] pooler (the product's head), or
    mean pooling over the tokens (``mean``: how all-MiniLM-L6-v2 was trained for sentence embeddings)."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16):
        outputs = model.bert(input_ids=input_ids, attention_mask=mask)
        if pool == "cls":
            pooled = outputs.pooler_output
        else:
            weights = mask.unsqueeze(-1).to(outputs.last_hidden_state.dtype)
            pooled = (outputs.last_hidden_state * weights).sum(1) / weights.sum(1)
        return model.classifier(model.dropout(pooled)).float(), pooled.float()


def logits_of(model, input_ids: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    return forward(model, input_ids, mask, pool)[0]


def training_loss(model, input_ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, config: dict):
    """Cross-entropy, with R-Drop's consistency term and a supervised contrastive share if configured."""
    logits, pooled = forward(model, input_ids, mask, config["pool"])
    loss = torch.nn.functional.cross_entropy(logits, target, label_smoothing=config["label_smoothing"])
    if config["rdrop"]:
        again = logits_of(model, input_ids, mask, config["pool"])  # a second dropout mask
        loss = (loss + torch.nn.functional.cross_entropy(again, target)) / 2
        loss = loss + config["rdrop"] * symmetric_kl(logits, again)
    if config["supcon"]:
        loss = (1 - config["supcon"]) * loss + config["supcon"] * supervised_contrastive(pooled, target)
    return loss


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean of KL(p1 || p2) and KL(p2 || p1) of two logit batches (R-Drop)."""
    a, b = first.log_softmax(-1), second.log_softmax(-1)
    kl = torch.nn.functional.kl_div
    return (
        kl(a, b, log_target=True, reduction="batchmean") + kl(b, a, log_target=True, reduction="batchmean")
    ) / 2


def supervised_contrastive(
    embeddings: torch.Tensor, target: torch.Tensor, temperature: float = 0.3
) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss over one batch: each issue pulled towards the
    others of its label (as Gunel et al. add it to fine-tuning)."""
    z = torch.nn.functional.normalize(embeddings, dim=-1)
    itself = torch.eye(len(target), dtype=torch.bool, device=target.device)
    similarity = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_share = similarity - similarity.logsumexp(dim=1, keepdim=True)
    positives = (target[:, None] == target[None, :]) & ~itself
    counts = positives.sum(1)
    anchors = counts > 0
    if not anchors.any():
        return similarity.new_zeros(())
    return -(log_share.masked_fill(~positives, 0.0).sum(1)[anchors] / counts[anchors]).mean()


def predict(model, ids: list[list[int]], rows: list[int], pool: str) -> np.ndarray:
    """Class probabilities of `rows`."""
    return torch.from_numpy(predict_logits(model, ids, rows, pool)).softmax(-1).numpy()


@torch.no_grad()
def predict_logits(model, ids: list[list[int]], rows: list[int], pool: str) -> np.ndarray:
    """Logits of `rows`, scored in batches of similar length."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(ids[rows[i]]))
    logits = np.zeros((len(rows), 3), dtype=np.float32)
    for start in range(0, len(order), 128):
        chunk = order[start : start + 128]
        logits[chunk] = logits_of(model, *padded(ids, [rows[i] for i in chunk], device), pool).cpu().numpy()
    model.train()
    return logits


def base_model(seed: int, head_seed: int, device: torch.device):
    """The base model with a new head drawn from `head_seed`; dropout then follows `seed`."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(head_seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(DATA["folder"]) / "model"), num_labels=3, dtype=torch.float32
    )
    set_seed(seed)
    return model.to(device)


def reinitialise_top(model, count: int) -> None:
    """Draw the pooler and the top `count` encoder layers anew, as BERT initialises them."""
    std = model.config.initializer_range
    for module in [model.bert.pooler, *model.bert.encoder.layer[len(model.bert.encoder.layer) - count :]]:
        for part in module.modules():
            if isinstance(part, torch.nn.Linear):
                torch.nn.init.normal_(part.weight, std=std)
                torch.nn.init.zeros_(part.bias)
            elif isinstance(part, torch.nn.LayerNorm):
                torch.nn.init.ones_(part.weight)
                torch.nn.init.zeros_(part.bias)


def optimizer_for(model, config: dict) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it: no weight decay on biases and LayerNorm weights."""
    if config["freeze_embeddings"]:
        model.bert.embeddings.requires_grad_(False)
    layers = len(model.bert.encoder.layer)
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = 0.0 if "bias" in name or "LayerNorm" in name else config["weight_decay"]
        lr = config["lr"] * config["layer_decay"] ** (layers + 1 - layer_depth(name, layers))
        groups.setdefault((lr, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()],
        lr=config["lr"],
        fused=next(model.parameters()).is_cuda,
    )


def layer_depth(name: str, layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, layers + 1 for the pooler and the head."""
    if ".embeddings." in name:
        return 0
    if ".encoder.layer." in name:
        return int(name.split(".encoder.layer.")[1].split(".")[0]) + 1
    return layers + 1


def train_epoch(
    model,
    ids: list[list[int]],
    rows: list[int],
    config: dict,
    generator,
    optimizer,
    scheduler=None,
    clip=None,
) -> None:
    """One pass over `rows` in length-grouped batches; gradients clipped to norm `clip` if given."""
    device = next(model.parameters()).device
    order = grouped_order([len(ids[row]) for row in rows], config["batch"], generator)
    for start in range(0, len(order), config["batch"]):
        batch = [rows[i] for i in order[start : start + config["batch"]]]
        target = torch.tensor([DATA["labels"][row] for row in batch], device=device)
        training_loss(model, *padded(ids, batch, device), target, config).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if scheduler:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def train_head(model, ids: list[list[int]], rows: list[int], config: dict, generator) -> None:
    """LP-FT's first stage: `head_epochs` of the classification head alone, the encoder frozen."""
    model.bert.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(config["head_epochs"]):
        train_epoch(model, ids, rows, config, generator, optimizer)
    model.bert.requires_grad_(True)  # `optimizer_for` freezes the embeddings again if configured


def train_run(config: dict, fold: int, seed: int, device: torch.device) -> tuple[dict, dict]:
    """One training on one fold: (result row, the mean weights the product's default would publish)."""
    from transformers import get_linear_schedule_with_warmup

    ids = DATA["input_ids"][config["inputs"]]
    split = DATA["folds"][str(config["split"] or DATA["default_split"])][fold]
    train, validation, test = (
        spread(part, config["rows"])
        for part in (training_rows(split, config["train_share"]), split["validation"], split["test"])
    )
    model = base_model(seed, 42 if config["soup"] else seed, device)
    started = time.perf_counter()
    if config["adapt_epochs"]:
        adapt_to_texts(model, ids, train + validation, config["adapt_epochs"], device)
    adapt_seconds = time.perf_counter() - started
    if config["reinit_layers"]:
        reinitialise_top(model, config["reinit_layers"])
    generator = torch.Generator().manual_seed(seed)
    if config["head_epochs"]:
        train_head(model, ids, train, config, generator)
    optimizer = optimizer_for(model, config)
    total = math.ceil(len(train) / config["batch"]) * config["epochs"]
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config["warmup"] * total), total)
    snapshots, epoch_validation, epoch_test = [], [], []
    model.train()
    for _ in range(config["epochs"]):
        train_epoch(model, ids, train, config, generator, optimizer, scheduler, clip=1.0)
        snapshots.append({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        epoch_validation.append(predict(model, ids, validation, config["pool"]))
        epoch_test.append(predict(model, ids, test, config["pool"]))
    seconds = time.perf_counter() - started
    mean_of_last, default = {}, DATA["averaged_epochs"][str(config["epochs"])]
    for count in range(1, config["epochs"] + 1):
        model.load_state_dict(mean_weights(snapshots[-count:]))
        mean_of_last[count] = predict(model, ids, test, config["pool"])
    model.load_state_dict(mean_weights(snapshots[-default:]))
    parts = {"validation": validation, "test": test}
    logits = {part: predict_logits(model, ids, rows, config["pool"]) for part, rows in parts.items()}
    row = {
        "config": config["name"], "fold": fold, "split": config["split"], "seed": seed, "train_s": seconds,
        "train_share": config["train_share"],
        "adapt_s": adapt_seconds,
        "test": test,
        "epoch_validation_accuracy": [accuracy(p, validation) for p in epoch_validation],
        "epoch_test": [p.argmax(-1).tolist() for p in epoch_test],
        "mean_of_last_test": {count: p.argmax(-1).tolist() for count, p in mean_of_last.items()},
        "default_count": default,
        "default_probabilities": np.round(mean_of_last[default], 4).tolist(),
        "validation": validation,  # the default weights' logits, to calibrate (summary --blend)
        "default_logits": {part: np.round(v.astype(np.float64), 3).tolist() for part, v in logits.items()},
    }  # fmt: skip
    return row, model.state_dict()


def adapt_to_texts(model, ids: list[list[int]], rows: list[int], epochs: int, device: torch.device) -> None:
    """Task-adaptive pre-training (Gururangan et al., 2020): `epochs` of BERT's masked-language-model
    objective on the texts of `rows` (15% of tokens: 80% masked, 10% random, 10% kept), batch 32,
    lr 1e-4 with 6% warm-up; the encoder's weights then replace `model`'s (its pooler and head stay)."""
    from transformers import BertForMaskedLM, get_linear_schedule_with_warmup

    language_model = BertForMaskedLM.from_pretrained(str(Path(DATA["folder"]) / "model"), dtype=torch.float32)
    language_model.bert.load_state_dict(model.bert.state_dict(), strict=False)
    language_model.to(device).train()
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=1e-4, weight_decay=0.01)
    total = math.ceil(len(rows) / 32) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * total), total)
    special = torch.tensor(DATA["tokens"]["special"], device=device)
    for _ in range(epochs):
        order = torch.randperm(len(rows)).tolist()
        for start in range(0, len(order), 32):
            input_ids, mask = padded(ids, [rows[i] for i in order[start : start + 32]], device)
            chosen = (torch.rand(input_ids.shape, device=device) < 0.15) & mask.bool()
            chosen &= ~torch.isin(input_ids, special)
            if not chosen.any():
                continue
            roll = torch.rand(input_ids.shape, device=device)
            corrupted = input_ids.masked_fill(chosen & (roll < 0.8), DATA["tokens"]["mask"])
            swapped = chosen & (roll >= 0.8) & (roll < 0.9)
            corrupted[swapped] = torch.randint(DATA["tokens"]["vocab"], (int(swapped.sum()),), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                hidden = language_model.bert(input_ids=corrupted, attention_mask=mask).last_hidden_state
                predicted = language_model.cls(hidden[chosen]).float()
            torch.nn.functional.cross_entropy(predicted, input_ids[chosen]).backward()
            torch.nn.utils.clip_grad_norm_(language_model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    missing, unexpected = model.bert.load_state_dict(language_model.bert.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("pooler.") for name in missing), (missing, unexpected)


def spread(rows: list[int], count: int | None) -> list[int]:
    """`count` of `rows`, evenly spaced (so every repository and label, as the issues are ordered)."""
    if count is None:
        return rows
    return [rows[i * len(rows) // count] for i in range(min(count, len(rows)))]


def training_rows(fold: dict, share: float) -> list[int]:
    """The share of a fold's training issues a learning-curve run trains on (evenly spaced)."""
    return spread(fold["train"], round(share * len(fold["train"])))


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
    from retrainer.core.scoring import evaluation_report

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


def summarise_blends(
    result_files: list[Path], data: Path, weights: list[float], issues_file: Path | None
) -> None:
    """Out-of-fold macro-F1 of each run's default weights blended with the product's lexical model
    (`retrainer.core.lexical`, fitted here on each fold's train and validation issues), by blend weight
    (weight 1: the lexical model alone). Runs that saved their logits are also blended as the
    product blends now: at the temperature fitted on each fold's validation issues
    (`retrainer.core.calibration`)."""
    from retrainer.core.calibration import fit_temperature
    from retrainer.core.labels import LABELS
    from retrainer.core.lexical import blend_probabilities, fit_lexical_model

    from baseline import NLBSE, load_issues

    prepared = json.loads((data / "data.json").read_text())
    texts = load_issues(issues_file or NLBSE, "--issues")["text"].tolist()
    labels = np.array(prepared["labels"])
    # (config, seed, (split, training share), temperature) -> out-of-fold probabilities;
    # temperatures: 1 and fitted
    transformer: dict[tuple, np.ndarray] = {}
    fitted: dict[tuple, list[float]] = {}
    for path in result_files:
        for row in map(json.loads, path.read_text().splitlines()):
            issues = (str(row.get("split") or prepared["default_split"]), row.get("train_share", 1.0))
            key = (row["config"], row["seed"], issues)
            if "default_probabilities" in row:
                runs = transformer.setdefault((*key, "1"), np.full((len(labels), len(LABELS)), np.nan))
                runs[row["test"]] = row["default_probabilities"]
            if "default_logits" in row:
                logits = {part: torch.tensor(v) for part, v in row["default_logits"].items()}
                temperature = fit_temperature(logits["validation"], labels[row["validation"]].tolist())
                fitted.setdefault(key, []).append(temperature)
                runs = transformer.setdefault((*key, "fitted"), np.full((len(labels), len(LABELS)), np.nan))
                runs[row["test"]] = (logits["test"] / temperature).softmax(-1).numpy()
    lexical = {}  # fitted on the same issues as the transformer beside it
    for split, share in sorted({key[2] for key in transformer}):
        lexical[split, share] = torch.zeros((len(labels), len(LABELS)))
        for fold in prepared["folds"][split]:
            rows = training_rows(fold, share) + fold["validation"]
            model = fit_lexical_model([texts[r] for r in rows], labels[rows].tolist(), list(LABELS), 1.0)
            lexical[split, share][fold["test"]] = model.probabilities([texts[r] for r in fold["test"]])
    print(f"{'configuration':26} {'seed':>4} {'temperature':>16} " + " ".join(f"{w:>6.2f}" for w in weights))
    for (config, seed, issues, temperature), probabilities in sorted(transformer.items()):
        if np.isnan(probabilities).any():
            continue  # not every fold finished
        blends = [
            blend_probabilities(torch.from_numpy(probabilities).float(), lexical[issues], weight).numpy()
            for weight in weights
        ]
        if temperature == "fitted":
            temperature = "/".join(f"{t:.2f}" for t in fitted[(config, seed, issues)])
        print(f"{config:26} {seed:4} {temperature:>16} " + " ".join(f"{_f1(b, labels):6.3f}" for b in blends))


def _f1(probabilities: np.ndarray, labels: np.ndarray) -> float:
    from retrainer.core.scoring import evaluation_report

    return evaluation_report(probabilities.argmax(-1).tolist(), labels.tolist()).macro_f1


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
    prep.add_argument("--issues", type=Path, help="the NLBSE'24 issues_train.csv (default: ../shared/data)")
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
    summary.add_argument(
        "--blend",
        type=float,
        nargs="+",
        metavar="WEIGHT",
        help="blend with the lexical model at these weights",
    )
    summary.add_argument("--issues", type=Path, help="with --blend: the issues file prep encoded")
    args = parser.parse_args()
    if args.command == "prep":
        prepare(args.out, args.issues)
    elif args.command == "run":
        run(args.data, args.set, args.out, args.workers, args.deadline, args.smoke)
    elif args.blend:
        summarise_blends(args.results, args.data, args.blend, args.issues)
    else:
        summarise(args.results, args.data)


if __name__ == "__main__":
    sys.exit(main())
