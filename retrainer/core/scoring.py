"""Scoring: score a model (champion or challenger) on the gate's eval split.

Both models are scored here, in the same run, on the same rows, so their numbers are comparable.
Metrics come from the project's local `evaluate` modules (accuracy, classification_report).
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from retrainer.core.devices import inference_device, inference_dtype
from retrainer.core.evaluation import EvalReport, ModelEvaluation
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.lexical import LexicalModel
from retrainer.core.masking import mask_text
from retrainer.core.text import InputRecipe, encode


def load_classifier(model_dir: Path):
    """Tokenizer and model from a local folder (safetensors only), checked against the label set."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = inference_device()
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, use_safetensors=True, dtype=inference_dtype(device)
    )
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if labels != list(LABELS):
        raise ValueError(f"model in {model_dir} predicts {labels}, expected {list(LABELS)}")
    return tokenizer, model.to(device).eval()


@dataclass(frozen=True)
class ScoringModel:
    """A published model loaded once, ready to score many calls (a service holds one): the tokenizer and
    transformer, the input recipe it was trained with, and its lexical half (None: the transformer alone)."""

    tokenizer: Any
    model: Any
    recipe: InputRecipe
    lexical: LexicalModel | None

    def probabilities(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities (one row per text, columns in label order), batched by similar length."""
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))  # little padding per batch
        # One masking for both halves: the encoder masks a ticket after cleaning it, the lexical half the
        # whole ticket; where cleaning changes nothing (most short support tickets) that is the same text.
        masker = cache(mask_text)
        probabilities = torch.empty((len(texts), len(LABELS)))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                encoded = encode(
                    [texts[index] for index in chunk],
                    self.tokenizer,
                    self.recipe,
                    masker,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self.model(**encoded.to(self.model.device)).logits
                probabilities[chunk] = logits.float().softmax(dim=-1).cpu()
        if self.lexical is None:
            return probabilities
        return self.lexical.blend(probabilities, self.lexical.probabilities(texts, masker))


def load_scoring_model(model_dir: Path, max_length: int, lexical: bool = True) -> ScoringModel:
    """Load the model in `model_dir` for scoring.

    Texts are encoded with the model's own input recipe; `max_length` only applies to models saved
    before recipes were (they read raw text cut at the end). A model saved with a lexical half
    (`retrainer.core.lexical`) blends its probabilities in, unless `lexical` is False (the transformer's own).
    """
    tokenizer, model = load_classifier(model_dir)
    recipe = InputRecipe.of_model(model_dir, max_length)
    return ScoringModel(tokenizer, model, recipe, load_lexical_half(model_dir) if lexical else None)


def predict_probabilities(
    model_dir: Path, texts: list[str], max_length: int, batch_size: int = 64, lexical: bool = True
) -> torch.Tensor:
    """Class probabilities of `texts` by the model in `model_dir` (`load_scoring_model`, then
    `ScoringModel.probabilities`)."""
    return load_scoring_model(model_dir, max_length, lexical).probabilities(texts, batch_size)


def load_lexical_half(model_dir: Path) -> LexicalModel | None:
    """The model's lexical half (None: a transformer alone), checked against the label set."""
    lexical_model = LexicalModel.load(model_dir)
    if lexical_model is not None and lexical_model.labels != list(LABELS):
        raise ValueError(
            f"lexical model in {model_dir} predicts {lexical_model.labels}, expected {list(LABELS)}"
        )
    return lexical_model


def predict_label_ids(model_dir: Path, texts: list[str], max_length: int, batch_size: int = 64) -> list[int]:
    """The most probable label id for each text."""
    return predict_probabilities(model_dir, texts, max_length, batch_size).argmax(dim=-1).tolist()


def evaluation_report(predicted: list[int], references: list[int]) -> EvalReport:
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix."""
    # Imported here: `evaluate` (and `datasets`) take seconds to import, and what only predicts (`retrainer
    # predict`, `retrainer serve`) never needs them.
    from retrainer.core.metrics import load_metric

    accuracy = load_metric("accuracy").compute(predictions=predicted, references=references)["accuracy"]
    report = load_metric("classification_report").compute(
        predictions=predicted, references=references, num_labels=len(LABELS)
    )
    per_label = {name: dict(zip(LABELS, report[name], strict=True)) for name in ("precision", "recall", "f1")}
    return EvalReport(
        examples=len(references),
        accuracy=accuracy,
        macro_f1=report["macro_f1"],
        support=dict(zip(LABELS, report["support"], strict=True)),
        confusion_matrix=report["confusion_matrix"],
        **per_label,
    )


def score_model(
    model_dir: Path,
    eval_rows: pd.DataFrame,
    max_length: int,
    new_rows: list[bool],
    established_rows: list[bool] | None = None,
) -> ModelEvaluation:
    """Score the model in `model_dir` on `eval_rows`; `new_rows` marks the rows ingested in this run,
    `established_rows` those from batches the champion was trained on (each also scored on its own)."""
    predicted = predict_label_ids(model_dir, eval_rows["text"].tolist(), max_length)
    return evaluate_predictions(predicted, eval_rows, new_rows, established_rows)


def evaluate_predictions(
    predicted: list[int],
    eval_rows: pd.DataFrame,
    new_rows: list[bool],
    established_rows: list[bool] | None = None,
) -> ModelEvaluation:
    """A model's evaluation from its predicted label ids for `eval_rows` (in order); `new_rows` and
    `established_rows` as for `score_model`."""
    references = [LABEL_TO_ID[label] for label in eval_rows["label"]]
    return ModelEvaluation(
        overall=evaluation_report(predicted, references),
        new_data=_report_of(predicted, references, new_rows),
        established=_report_of(predicted, references, established_rows or []),
        correct=[p == r for p, r in zip(predicted, references, strict=True)],
        established_rows=established_rows or [],
        predicted=predicted,
    )


def _report_of(predicted: list[int], references: list[int], selected: list[bool]) -> EvalReport | None:
    """The report on the selected rows (None when none is)."""
    rows = [index for index, chosen in enumerate(selected) if chosen]
    if not rows:
        return None
    return evaluation_report([predicted[i] for i in rows], [references[i] for i in rows])
