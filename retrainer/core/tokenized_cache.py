"""Tokenized splits, and the per-dataset-version folder that keeps them across runs: a retried or
repeated fine-tune of the same dataset version skips tokenizing, and the folders of other versions are
deleted once idle (token ids read back into ticket text)."""

import hashlib
import shutil
import time
from pathlib import Path

import pandas as pd
from datasets import Dataset

from retrainer.core.labels import LABEL_TO_ID
from retrainer.core.text import InputRecipe, encode

CACHE_IDLE_S = 3600.0
"""Another dataset version's tokenized data untouched this long is deleted (`prune_tokenized_caches`)."""


def tokenize(rows: pd.DataFrame, tokenizer, recipe: InputRecipe, cache_file: Path | None = None) -> Dataset:
    """A tokenized `datasets.Dataset` with ``labels`` ids, encoded as `recipe` says.

    With `cache_file`, an existing file is loaded instead of tokenizing again.
    """
    dataset = Dataset.from_dict(
        {"text": rows["text"].tolist(), "labels": [LABEL_TO_ID[label] for label in rows["label"]]}
    )
    return dataset.map(
        lambda batch: encode(batch["text"], tokenizer, recipe),
        batched=True,
        remove_columns=["text"],
        cache_file_name=str(cache_file) if cache_file else None,
        load_from_cache_file=cache_file is not None,
    )


def tokenized_splits(
    splits: tuple[pd.DataFrame, pd.DataFrame],
    tokenizer,
    recipe: InputRecipe,
    cache: Path | None,
    model: tuple[str, str],
) -> tuple[Dataset, Dataset]:
    """(train, validation) tokenized, through the dataset version's cache folder `cache` when there is
    one; `model` (source, revision) names the tokenizer in the cache files' names."""
    if cache is not None:
        prune_tokenized_caches(cache.parent, keep=cache.name)
    return tuple(
        tokenize(rows, tokenizer, recipe, _cache_file(cache, split, *model, recipe))
        for split, rows in zip(("train", "validation"), splits, strict=True)
    )


def prune_tokenized_caches(root: Path, keep: str, idle_s: float = CACHE_IDLE_S) -> list[Path]:
    """Delete the tokenized-data folders under `root` other than `keep` that no run touched for
    `idle_s` seconds; the folders deleted.

    Why: token ids read back into ticket text, and a dataset version no longer current may hold tickets
    erased since (`retrainer forget`), so a worker keeps the current version's cache only. The idle time
    spares a folder another run on this worker is still tokenizing into."""
    if not root.is_dir():
        return []
    deleted = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name != keep and time.time() - folder.stat().st_mtime > idle_s:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def _cache_file(
    folder: Path | None, split: str, source: str, revision: str, recipe: InputRecipe
) -> Path | None:
    """One file per split, tokenizer and input recipe inside a dataset version's cache folder."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{source}|{revision}|{recipe.model_dump_json()}".encode()).hexdigest()[:12]
    return folder / f"{split}-{key}.arrow"
