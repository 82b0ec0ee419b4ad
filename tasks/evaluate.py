"""Evaluate: score a model (champion or challenger) on the gate's eval split, and measure the champion's
agreement with the labels of the tickets new to it, as Prefect tasks.

Both models are scored in the same run, on the same rows, so their numbers are comparable
(`retrainer.core.scoring`).
"""

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retrainer.core.agreement import LabelAgreement, measure_agreement
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.known_predictions import KnownPredictions, predict_reusing
from retrainer.core.labels import LABEL_TO_ID
from retrainer.core.scoring import evaluate_predictions
from retrainer.core.training_plan import unseen_mask
from retrainer.run_steps import ScoredModel
from tasks.common import once_task, run_logger
from tasks.dataset import EVAL


def score_on_eval(
    model_dir: Path,
    eval_rows: pd.DataFrame,
    max_length: int,
    new_rows: list[bool],
    established_rows: list[bool],
    known: KnownPredictions | None = None,
) -> ScoredModel:
    """Score the model in `model_dir` on `eval_rows` (`retrainer.core.scoring.score_model`), computing
    only the predictions `known` does not hold."""
    started = time.perf_counter()
    predicted = predict_reusing(
        model_dir, eval_rows["text"].tolist(), max_length, known or KnownPredictions()
    )
    evaluation = evaluate_predictions(predicted.label_ids, eval_rows, new_rows, established_rows)
    new_predictions = predicted.new_part(eval_rows["ticket_id"].tolist())
    run_logger().info(
        "scored %s on %d eval ticket(s): %d computed in %.1f s, %d known",
        model_dir.name,
        len(eval_rows),
        len(new_predictions),
        time.perf_counter() - started,
        len(eval_rows) - len(predicted.scored),
    )
    return ScoredModel(evaluation, new_predictions, reused=len(eval_rows) - len(predicted.scored))


@dataclass(frozen=True)
class ChampionAgreement:
    """The label check's figures, and the predictions it computed for tickets outside the eval split (to
    store under the champion's version with its eval predictions)."""

    agreement: LabelAgreement
    new_predictions: pd.DataFrame


def champion_label_agreement(
    champion_dir: Path,
    champion: ModelEvaluation,
    eval_rows: pd.DataFrame,
    curated: pd.DataFrame,
    seen: set[tuple[str, str]],
    max_length: int,
    known: KnownPredictions | None = None,
) -> ChampionAgreement:
    """The champion's predictions against the labels of every curated ticket new to it (from a batch not
    in `seen`, its training lineage) and of the established eval tickets (the others).

    Its eval predictions are reused from `champion` (scored on `eval_rows` this run); of the new tickets
    outside the eval split only those whose predictions `known` lacks are scored here: while a champion
    is kept, the same tickets stay new to it night after night, and are scored once.
    """
    is_new = unseen_mask(eval_rows, seen).to_numpy()
    others = curated[(curated["split"] != EVAL).to_numpy() & unseen_mask(curated, seen).to_numpy()]
    started = time.perf_counter()
    predicted = predict_reusing(
        champion_dir, others["text"].tolist(), max_length, known or KnownPredictions()
    )
    seconds = time.perf_counter() - started
    new_predicted, established_predicted = _split(champion.predicted, is_new)
    new_labels, established_labels = _split([LABEL_TO_ID[label] for label in eval_rows["label"]], is_new)
    agreement = measure_agreement(
        new_predicted=new_predicted + predicted.label_ids,
        new_labels=new_labels + [LABEL_TO_ID[label] for label in others["label"]],
        new_sources=[*eval_rows["source_key"][is_new], *others["source_key"]],
        established_predicted=established_predicted,
        established_labels=established_labels,
        extra_predictions=len(predicted.scored),
        extra_seconds=seconds,
    )
    run_logger().info(
        "label check: the champion agrees with %s of %d new ticket(s), %s of %d established eval ticket(s) "
        "(%d new ticket(s) outside the eval split: %d scored in %.1f s, the others known)",
        _share(agreement.new_agreement),
        agreement.new_tickets,
        _share(agreement.established_agreement),
        agreement.established_tickets,
        len(others),
        len(predicted.scored),
        seconds,
    )
    return ChampionAgreement(agreement, predicted.new_part(others["ticket_id"].tolist()))


def _split(values: list[int], is_new) -> tuple[list[int], list[int]]:
    """(the values of the new rows, those of the others), in order."""
    return (
        [value for value, new in zip(values, is_new, strict=True) if new],
        [value for value, new in zip(values, is_new, strict=True) if not new],
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


score_on_eval_task = once_task(score_on_eval, "score-on-eval")
champion_label_agreement_task = once_task(champion_label_agreement, "champion-label-agreement")
