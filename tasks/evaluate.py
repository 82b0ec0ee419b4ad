"""Evaluate: score a model (champion or challenger) on the gate's eval split.

Both models are scored here, in the same run, on the same rows, so their numbers are comparable.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from retrainer.metrics import load_metric
from tasks.common import once_task
from tasks.train import LABEL_TO_ID


@dataclass(frozen=True)
class ModelScore:
    """A model's score on an eval set."""

    accuracy: float
    examples: int


def predict_label_ids(model_dir: Path, texts: list[str], max_length: int, batch_size: int = 64) -> list[int]:
    """Predicted label ids for `texts`, batched by similar length to keep padding small."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    predictions = [0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[index] for index in chunk],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**encoded).logits
            for index, label_id in zip(chunk, logits.argmax(dim=-1).tolist(), strict=True):
                predictions[index] = label_id
    return predictions


def score_model(model_dir: Path, eval_rows: pd.DataFrame, max_length: int) -> ModelScore:
    """Accuracy of the model in `model_dir` on `eval_rows` (local `evaluate` accuracy module)."""
    predicted = predict_label_ids(model_dir, eval_rows["text"].tolist(), max_length)
    references = [LABEL_TO_ID[label] for label in eval_rows["label"]]
    result = load_metric("accuracy").compute(predictions=predicted, references=references)
    return ModelScore(accuracy=float(result["accuracy"]), examples=len(references))


score_model_task = once_task(score_model, "score-model")
