"""How a night's challenger is trained: from the base model on every curated ticket (full), or from the
champion's weights on the tickets it has not seen plus a replayed sample of those it has (incremental).

A full retrain costs time in proportion to every ticket ever curated; an incremental one in proportion to
what is new (`docs/experiments/2026-12-01-growing-data.md` measures both through the real gate). These
are pure functions: the flows read the champion and the curated data, decide here, and record the plan.

`TrainingRecipe` is the decision as one value: base model, revision, the config as trained and the plan,
made once by the retrain flow and handed to the fine-tune flow (in-process or as a deployment
parameter), which picks the rows and calls `retrainer.core.training.fine_tune`.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from retrainer.settings import IncrementalPolicy, RetrainerSettings, TrainingConfig

FULL, INCREMENTAL = "full", "incremental"


class TrainingPlan(BaseModel):
    """What a run trains from and why; kept in the run record, ``training.json`` and ``metrics.json``.

    `generation` counts the warm starts since the last full retrain (0: this is one)."""

    mode: Literal["full", "incremental"]
    reason: str
    warm_start_from: str | None = None
    generation: int = 0

    def summary(self) -> str:
        """One line for logs and reports."""
        source = f" from {self.warm_start_from}" if self.warm_start_from else ""
        return f"{self.mode}{source}: {self.reason}"


UNPLANNED = TrainingPlan(mode=FULL, reason="no plan given")
"""The plan of a fine-tune started without one (the fine-tune deployment run on its own)."""


class TrainingRecipe(BaseModel):
    """What a run's challenger is trained from and how, decided once for the run: `base_model` at
    `base_model_revision`, trained as `config` says (the settings' preset and the run's overrides, and for
    an incremental `plan` its epochs and learning rate), the rows picked as `incremental` says.

    The hardware's own adjustment (on CUDA, larger batches: `TrainingConfig.for_device`) is made where
    the run trains (`TrainingSpec.on_device`), as only that machine knows its device. A pydantic model:
    the retrain flow passes it to a fine-tune deployment as a parameter, and the run validates it back.
    """

    base_model: str
    base_model_revision: str
    config: TrainingConfig
    plan: TrainingPlan = UNPLANNED
    incremental: IncrementalPolicy = IncrementalPolicy()

    @classmethod
    def for_run(cls, settings: RetrainerSettings, plan: TrainingPlan = UNPLANNED) -> "TrainingRecipe":
        """The recipe of a run with these settings (a run's overrides applied) and this plan."""
        warm = plan.mode == INCREMENTAL
        return cls(
            base_model=settings.base_model,
            base_model_revision=settings.base_model_revision,
            config=incremental_config(settings.training, settings.incremental) if warm else settings.training,
            plan=plan,
            incremental=settings.incremental,
        )

    @property
    def warm(self) -> bool:
        """Whether the run starts from the champion's weights (an incremental plan)."""
        return self.plan.mode == INCREMENTAL


@dataclass(frozen=True)
class ChampionLineage:
    """What the plan needs to know about the model in production: its version, what it was fine-tuned
    from, and how many warm starts it is away from a full retrain."""

    version: str
    base_model: str | None
    base_model_revision: str | None
    generation: int


def plan_training(
    policy: IncrementalPolicy,
    champion: ChampionLineage | None,
    base_model: tuple[str, str],
    new_tickets: int,
    curated_tickets: int,
    full_requested: bool = False,
) -> TrainingPlan:
    """Full or incremental training for this run, with the reason.

    Incremental only when the policy allows it, a champion of the same base model (and revision) is in
    production, it is fewer than `policy.full_every` warm starts from a full retrain, and the tickets it
    has not seen are at most `policy.max_new_share` of the curated training tickets (beyond that a full
    retrain costs little more, and starts clean).
    """
    if full_requested:
        return TrainingPlan(mode=FULL, reason="full retraining requested for this run")
    if not policy.enabled:
        return TrainingPlan(mode=FULL, reason="incremental training is off (RETRAINER_INCREMENTAL__ENABLED)")
    if champion is None:
        return TrainingPlan(mode=FULL, reason="no champion to start from")
    if (champion.base_model, champion.base_model_revision) != base_model:
        was = f"{champion.base_model}@{champion.base_model_revision}"
        return TrainingPlan(
            mode=FULL, reason=f"the champion was fine-tuned from {was}, not {'@'.join(base_model)}"
        )
    if champion.generation + 1 > policy.full_every:
        return TrainingPlan(
            mode=FULL, reason=f"the champion is {champion.generation} warm start(s) from a full retrain"
        )
    if new_tickets == 0:
        return TrainingPlan(mode=FULL, reason="no tickets the champion has not seen")
    share = new_tickets / max(1, curated_tickets)
    if share > policy.max_new_share:
        return TrainingPlan(
            mode=FULL, reason=f"{share:.0%} of the training tickets are new (over {policy.max_new_share:.0%})"
        )
    return TrainingPlan(
        mode=INCREMENTAL,
        reason=f"{new_tickets} new of {curated_tickets} training tickets",
        warm_start_from=champion.version,
        generation=champion.generation + 1,
    )


def incremental_rows(rows: pd.DataFrame, is_new: pd.Series, replay_per_new: float, minimum: int, seed: int):
    """The rows an incremental run trains (or validates) on: every new row, plus a random sample of the
    others, `replay_per_new` of them per new row and at least `minimum` rows in all (or every row)."""
    new, seen = rows[is_new.to_numpy()], rows[~is_new.to_numpy()]
    wanted = max(math.ceil(replay_per_new * len(new)), minimum - len(new))
    replay_count = min(len(seen), max(0, wanted))
    replay = seen.iloc[np.random.default_rng(seed).choice(len(seen), size=replay_count, replace=False)]
    return pd.concat([new, replay]).reset_index(drop=True)


def incremental_config(config: TrainingConfig, policy: IncrementalPolicy) -> TrainingConfig:
    """The recipe of an incremental run: `config` with the policy's epochs and scaled learning rate."""
    return config.model_copy(
        update={
            "num_train_epochs": policy.epochs,
            "learning_rate": config.learning_rate * policy.learning_rate_scale,
        }
    )


def incremental_splits(
    splits: tuple[pd.DataFrame, pd.DataFrame],
    seen: set[tuple[str, str]],
    policy: IncrementalPolicy,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, lexical) rows of an incremental run. In each split, the rows from sources not
    in `seen` (the (source key, ETag) pairs the champion was trained on) and a replayed sample of the
    others. The lexical half starts from nothing, so it learns from both splits, up to
    `policy.lexical_max_rows`: every new row and a random sample of the others."""
    train, validation = (
        incremental_rows(rows, unseen_mask(rows, seen), policy.replay_per_new, policy.min_rows, seed)
        for rows in splits
    )
    both = pd.concat(splits, ignore_index=True)
    lexical = incremental_rows(both, unseen_mask(both, seen), 0.0, policy.lexical_max_rows, seed)
    return train, validation, lexical


def unseen_mask(rows: pd.DataFrame, seen: set[tuple[str, str]]) -> pd.Series:
    """For each row, whether its source (key, ETag) is NOT among `seen`."""
    pairs = zip(rows["source_key"], rows["source_etag"], strict=True)
    return pd.Series([pair not in seen for pair in pairs], index=rows.index)
