"""The lexical half of a published model: TF-IDF n-grams and logistic regression, blended with the
fine-tuned transformer's probabilities.

Why: on GitHub issues the two err on different tickets (the transformer reads 128 tokens of cleaned
text; TF-IDF reads every word and character n-gram of the whole ticket, code and stack traces
included), so a blend of their probabilities beats either (docs/experiments/2026-11-27-lexical-half.md).

Saved without pickle, beside the transformer: ``lexical.json`` (vocabularies, settings, blend
weight, the transformer's temperature) and ``lexical.safetensors`` (inverse document frequencies
and the regression's weights).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from retrainer.core.calibration import soften

SETTINGS_FILE = "lexical.json"
WEIGHTS_FILE = "lexical.safetensors"
FORMAT_VERSION = 1
ANALYZERS = {"word": ("word", (1, 2)), "char": ("char_wb", (2, 5))}
"""Feature groups: words and word pairs; character 2-5-grams within words (identifiers, error names)."""
INVERSE_REGULARISATION = 10.0
"""Logistic regression's C (measured: C=10 0.769, C=3 0.760 macro-F1 alone, 5 folds of 1,500 issues)."""
MIN_DOCUMENT_FREQUENCY = 2
"""n-grams in fewer texts than this are dropped (unless that leaves no vocabulary: small datasets)."""
MAX_FEATURES = 250_000
"""Per feature group, the most frequent n-grams kept: bounds the saved model (~10 MB) as the curated
data grows (1,350 GitHub issues give 31k word and 158k character n-grams, under the cap)."""


class MissingLabelsError(ValueError):
    """Some label has no training text: a regression cannot learn it."""


@dataclass
class LexicalModel:
    """Fitted TF-IDF vectorizers and a logistic regression over their features."""

    vectorizers: dict[str, TfidfVectorizer]
    classifier_weights: np.ndarray  # (labels, features)
    classifier_bias: np.ndarray  # (labels,)
    labels: list[str]
    blend_weight: float
    transformer_temperature: float = 1.0
    """Divides the transformer's logits before blending (`retrainer.core.calibration`); 1: as they are."""

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Class probabilities per text, columns in `labels` order."""
        logits = features(self.vectorizers, texts) @ self.classifier_weights.T + self.classifier_bias
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=-1)

    def blend(
        self, transformer_probabilities: torch.Tensor, lexical_probabilities: torch.Tensor
    ) -> torch.Tensor:
        """`blend_weight` of this model's probabilities (from `probabilities`) plus the rest of the
        transformer's at `transformer_temperature`, for the same texts."""
        return blend_probabilities(
            transformer_probabilities, lexical_probabilities, self.blend_weight, self.transformer_temperature
        )

    def save(self, model_dir: Path) -> None:
        """Write ``lexical.json`` and ``lexical.safetensors`` into `model_dir`."""
        settings = {
            "format": FORMAT_VERSION,
            "labels": self.labels,
            "blend_weight": self.blend_weight,
            "transformer_temperature": self.transformer_temperature,
            "vocabularies": {
                name: {term: int(index) for term, index in vectorizer.vocabulary_.items()}
                for name, vectorizer in self.vectorizers.items()
            },
        }
        (model_dir / SETTINGS_FILE).write_text(json.dumps(settings))
        tensors = {f"idf.{name}": v.idf_ for name, v in self.vectorizers.items()}
        tensors |= {"classifier.weight": self.classifier_weights, "classifier.bias": self.classifier_bias}
        # safetensors writes memory order: a column-major array (as scikit-learn returns) would be scrambled
        save_file(
            {key: np.ascontiguousarray(value) for key, value in tensors.items()},
            str(model_dir / WEIGHTS_FILE),
        )

    @classmethod
    def load(cls, model_dir: Path) -> "LexicalModel | None":
        """The lexical model saved in `model_dir`; None when it has none (a transformer alone)."""
        if not (model_dir / SETTINGS_FILE).exists():
            return None
        settings = json.loads((model_dir / SETTINGS_FILE).read_text())
        if settings.get("format") != FORMAT_VERSION:
            raise ValueError(f"{model_dir / SETTINGS_FILE}: unknown format {settings.get('format')!r}")
        tensors = load_file(str(model_dir / WEIGHTS_FILE))
        vectorizers = {}
        for name, vocabulary in settings["vocabularies"].items():
            vectorizers[name] = new_vectorizer(name, vocabulary=vocabulary)
            vectorizers[name].idf_ = tensors[f"idf.{name}"]
        return cls(
            vectorizers=vectorizers,
            classifier_weights=tensors["classifier.weight"],
            classifier_bias=tensors["classifier.bias"],
            labels=settings["labels"],
            blend_weight=settings["blend_weight"],
            # models saved before calibration blended the transformer's probabilities as they were
            transformer_temperature=settings.get("transformer_temperature", 1.0),
        )


def blend_probabilities(
    transformer_probabilities: torch.Tensor,
    lexical_probabilities: torch.Tensor,
    weight: float,
    transformer_temperature: float = 1.0,
) -> torch.Tensor:
    """`weight` of the lexical probabilities plus the rest of the transformer's, its logits divided
    by `transformer_temperature` first."""
    transformer = soften(transformer_probabilities, transformer_temperature)
    return (1 - weight) * transformer + weight * lexical_probabilities


def new_vectorizer(name: str, **arguments) -> TfidfVectorizer:
    """An unfitted vectorizer of feature group `name` (sub-linear term frequency, lower case)."""
    analyzer, ngram_range = ANALYZERS[name]
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True, **arguments)


def features(vectorizers: dict[str, TfidfVectorizer], texts: list[str]):
    """The sparse TF-IDF features of `texts`, feature groups side by side."""
    return hstack([vectorizer.transform(texts) for vectorizer in vectorizers.values()]).tocsr()


def fit_lexical_model(
    texts: list[str], label_ids: list[int], labels: list[str], blend_weight: float
) -> LexicalModel:
    """Fit the vectorizers and the regression on labelled texts (every label must occur)."""
    missing = sorted(set(range(len(labels))) - set(label_ids))
    if missing:
        raise MissingLabelsError(
            f"no training texts labelled {', '.join(labels[index] for index in missing)}"
        )
    fitted = {name: _fitted_features(name, texts) for name in ANALYZERS}
    regression = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=3000)
    # the groups side by side in ANALYZERS order, as `features` stacks them at scoring
    regression.fit(hstack([matrix for _, matrix in fitted.values()]).tocsr(), label_ids)
    return LexicalModel(
        vectorizers={name: vectorizer for name, (vectorizer, _) in fitted.items()},
        classifier_weights=regression.coef_.astype(np.float32),
        classifier_bias=regression.intercept_.astype(np.float32),
        labels=list(labels),
        blend_weight=blend_weight,
    )


def _fitted_features(name: str, texts: list[str]) -> tuple[TfidfVectorizer, csr_matrix]:
    """A vectorizer of feature group `name` fitted on `texts`, and their features from the same pass
    (fitting, then transforming the texts again, tokenized them twice: ~3 s of ~12 on 1,350 issues)."""
    try:
        vectorizer = new_vectorizer(name, min_df=MIN_DOCUMENT_FREQUENCY, max_features=MAX_FEATURES)
        return vectorizer, vectorizer.fit_transform(texts)
    except ValueError:  # "no terms remain": too few texts share an n-gram
        vectorizer = new_vectorizer(name, max_features=MAX_FEATURES)
        return vectorizer, vectorizer.fit_transform(texts)
