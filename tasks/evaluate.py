"""Evaluate: score a model (champion or challenger) on the gate's eval split, and measure the champion's
agreement with the labels of the tickets new to it, as Prefect tasks.

Both models are scored in the same run, on the same rows, so their numbers are comparable
(`retrainer.core.scoring`).
"""

import time
from pathlib import Path

import pandas as pd

from retrainer.core.agreement import LabelAgreement, measure_agreement
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.labels import LABEL_TO_ID
from retrainer.core.scoring import predict_label_ids, score_model
from retrainer.core.training_plan import unseen_mask
from tasks.common import once_task, run_logger
from tasks.dataset import EVAL


def champion_label_agreement(
    champion_dir: Path,
    champion: ModelEvaluation,
    eval_rows: pd.DataFrame,
    curated: pd.DataFrame,
    seen: set[tuple[str, str]],
    max_length: int,
) -> LabelAgreement:
    """The champion's predictions against the labels of every curated ticket new to it (from a batch not
    in `seen`, its training lineage) and of the established eval tickets (the others).

    Its eval predictions are reused from `champion` (scored on `eval_rows` this run); only the new tickets
    outside the eval split are scored here, once: the check's cost, in proportion to what is new.
    """
    is_new = unseen_mask(eval_rows, seen).to_numpy()
    others = curated[(curated["split"] != EVAL).to_numpy() & unseen_mask(curated, seen).to_numpy()]
    started = time.perf_counter()
    others_predicted = (
        predict_label_ids(champion_dir, others["text"].tolist(), max_length) if len(others) else []
    )
    seconds = time.perf_counter() - started
    new_predicted, established_predicted = _split(champion.predicted, is_new)
    new_labels, established_labels = _split([LABEL_TO_ID[label] for label in eval_rows["label"]], is_new)
    agreement = measure_agreement(
        new_predicted=new_predicted + others_predicted,
        new_labels=new_labels + [LABEL_TO_ID[label] for label in others["label"]],
        new_sources=[*eval_rows["source_key"][is_new], *others["source_key"]],
        established_predicted=established_predicted,
        established_labels=established_labels,
        extra_predictions=len(others),
        extra_seconds=seconds,
    )
    run_logger().info(
        "label check: the champion agrees with %s of %d new ticket(s), %s of %d established eval ticket(s) "
        "(%d new ticket(s) outside the eval split scored in %.1f s)",
        _share(agreement.new_agreement),
        agreement.new_tickets,
        _share(agreement.established_agreement),
        agreement.established_tickets,
        len(others),
        seconds,
    )
    return agreement


def _split(values: list[int], is_new) -> tuple[list[int], list[int]]:
    """(the values of the new rows, those of the others), in order."""
    return (
        [value for value, new in zip(values, is_new, strict=True) if new],
        [value for value, new in zip(values, is_new, strict=True) if not new],
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


score_model_task = once_task(score_model, "score-model")
champion_label_agreement_task = once_task(champion_label_agreement, "champion-label-agreement")
