"""The lexical half of a published model: TF-IDF + logistic regression, saved without pickle."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save_file

from app.samples import generate_tickets
from retrainer.core import lexical, ngram_hashing
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.lexical import SETTINGS_FILE, LexicalModel, MissingLabelsError, fit_lexical_model
from retrainer.core.scoring import load_lexical_half
from retrainer.core.text import join_title
from retrainer.report.model_card import lexical_note

# The NLBSE'24 tool competition's 1,500 labelled GitHub issues: not in this repository (its source,
# https://github.com/nlbse2024/issue-report-classification, states no license), so the test that needs
# them skips without them. NLBSE_ISSUES names the file; the default is where this project's machines keep it.
NLBSE = Path(
    os.environ.get("NLBSE_ISSUES")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "nlbse24" / "issues_train.csv"
)
NLBSE_LABELS = {"bug": "bug", "feature": "feature_request", "question": "general_inquiry"}


def _fitted(tickets: pd.DataFrame, blend_weight: float = 0.6) -> LexicalModel:
    label_ids = [LABEL_TO_ID[label] for label in tickets["label"]]
    return fit_lexical_model(tickets["text"].tolist(), label_ids, list(LABELS), blend_weight)


def test_a_saved_lexical_model_predicts_exactly_as_the_fitted_one_and_nothing_is_pickled(tmp_path):
    tickets = generate_tickets(300, seed=1)
    fitted = _fitted(tickets)
    fitted.transformer_temperature = 2.25
    texts = generate_tickets(50, seed=2)["text"].tolist()

    fitted.save(tmp_path)
    loaded = LexicalModel.load(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["lexical.json", "lexical.safetensors"]
    assert torch.equal(loaded.probabilities(texts), fitted.probabilities(texts))
    assert loaded.blend_weight == 0.6 and loaded.labels == list(LABELS)
    assert loaded.transformer_temperature == 2.25


@pytest.mark.slow  # ~25 s: TF-IDF over 1,200 long issues
@pytest.mark.skipif(
    not NLBSE.is_file(),
    reason=f"NLBSE'24 issues not found at {NLBSE}: get issues_train.csv from "
    "https://github.com/nlbse2024/issue-report-classification and set NLBSE_ISSUES to its path",
)
def test_the_lexical_model_learns_real_github_issues():
    issues = pd.read_csv(NLBSE)
    tickets = pd.DataFrame(
        {
            "text": [join_title(t, b) for t, b in zip(issues["title"], issues["body"], strict=True)],
            "label": issues["label"].map(NLBSE_LABELS),
        }
    )
    test = tickets.iloc[::5]  # every repository and label (the file is ordered by repository)
    model = _fitted(tickets.drop(index=test.index))

    predicted = model.probabilities(test["text"].tolist()).argmax(dim=-1)
    expected = torch.tensor([LABEL_TO_ID[label] for label in test["label"]])

    assert (predicted == expected).float().mean() > 0.70  # 0.77 out-of-fold (docs/experiments/); chance 0.33


def test_blending_takes_the_configured_share_of_the_lexical_probabilities():
    tickets = generate_tickets(300, seed=1)
    model = _fitted(tickets, blend_weight=0.25)
    texts = tickets["text"].tolist()[:20]
    transformer = torch.full((20, 3), 1 / 3)

    blended = model.blend(transformer, model.probabilities(texts))

    assert torch.allclose(blended, 0.75 * transformer + 0.25 * model.probabilities(texts))
    assert torch.allclose(blended.sum(dim=-1), torch.ones(20))


def test_blending_divides_the_transformers_logits_by_its_temperature_first():
    tickets = generate_tickets(300, seed=1)
    model = _fitted(tickets, blend_weight=0.6)
    model.transformer_temperature = 2.0
    texts = tickets["text"].tolist()[:20]
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)) * 6

    blended = model.blend(logits.softmax(dim=-1), model.probabilities(texts))

    assert torch.allclose(blended, 0.4 * (logits / 2.0).softmax(dim=-1) + 0.6 * model.probabilities(texts))


def test_a_lexical_model_saved_before_calibration_blends_the_transformer_as_it_is(tmp_path):
    tickets = generate_tickets(300, seed=1)
    _fitted(tickets).save(tmp_path)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    del settings["transformer_temperature"]
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(settings))

    assert LexicalModel.load(tmp_path).transformer_temperature == 1.0


def test_a_label_without_training_texts_is_named():
    tickets = generate_tickets(300, seed=1)
    no_questions = tickets[tickets["label"] != "general_inquiry"]

    with pytest.raises(MissingLabelsError, match="no training texts labelled general_inquiry"):
        _fitted(no_questions)


def test_texts_that_share_no_ngram_often_enough_give_no_lexical_half():
    tickets = pd.DataFrame(
        {
            "text": ["app crashes", "add dark mode", "reset password"],
            "label": ["bug", "feature_request", "general_inquiry"],
        }
    )  # no word or character n-gram is in 5 texts: all of it could be what one customer wrote

    with pytest.raises(
        MissingLabelsError, match="no word or character n-gram is in 5 or more of the 3 training texts"
    ):
        _fitted(tickets)


def test_a_string_in_fewer_texts_than_the_minimum_document_frequency_has_no_weight():
    tickets = generate_tickets(300, seed=1)
    rare, common = "quentinzybrowski", "acmewidgetpro"
    tickets.loc[:3, "text"] += f" {rare}"  # in 4 texts: one customer's signature
    tickets.loc[:4, "text"] += f" {common}"  # in 5 texts: the minimum
    model = _fitted(tickets)

    word_features = model.vectorizers["word"]

    assert word_features.transform([rare]).nnz == 0
    assert word_features.transform([common]).nnz == 1
    assert lexical.MIN_DOCUMENT_FREQUENCY == 5


def test_the_saved_files_name_no_ngram_so_no_customer_string_ships_with_a_model(tmp_path):
    tickets = generate_tickets(300, seed=1)
    tickets.loc[:9, "text"] += " Regards, Quentin Zybrowski, quentin.zybrowski@example.com"  # 10 tickets
    _fitted(tickets).save(tmp_path)

    saved = b"".join(path.read_bytes() for path in tmp_path.iterdir()).lower()

    for fragment in (b"zybrowski", b"quentin", b"example.com", b"regards"):
        assert fragment not in saved
    assert "vocabularies" not in json.loads((tmp_path / SETTINGS_FILE).read_text())


def test_masked_kinds_are_masked_alike_in_fitting_and_scoring(tmp_path):
    tickets = generate_tickets(300, seed=1)
    label_ids = [LABEL_TO_ID[label] for label in tickets["label"]]
    fit_lexical_model(tickets["text"].tolist(), label_ids, list(LABELS), 0.6, mask=("email",)).save(tmp_path)
    model = LexicalModel.load(tmp_path)
    text = tickets["text"].iloc[0]

    one, other = model.probabilities([f"{text} mail ann@corp.io", f"{text} mail bob.smith@other.de"])

    assert model.mask == ("email",)
    assert torch.equal(one, other)  # both read "[email]"


def test_a_model_saved_before_hashing_still_scores_as_it_always_did(tmp_path):
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    tickets = generate_tickets(300, seed=1)
    vectorizers = {
        "word": TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        "char": TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    }
    matrix = hstack([v.fit_transform(tickets["text"]) for v in vectorizers.values()]).tocsr()
    regression = LogisticRegression(max_iter=3000).fit(matrix, tickets["label"].map(LABEL_TO_ID))
    (tmp_path / SETTINGS_FILE).write_text(
        json.dumps(
            {
                "format": 1,
                "labels": list(LABELS),
                "blend_weight": 0.6,
                "vocabularies": {
                    n: {t: int(i) for t, i in v.vocabulary_.items()} for n, v in vectorizers.items()
                },
            }
        )
    )
    tensors = {f"idf.{name}": v.idf_ for name, v in vectorizers.items()}
    tensors |= {
        "classifier.weight": regression.coef_.astype("float32"),
        "classifier.bias": regression.intercept_,
    }
    save_file(
        {key: np.ascontiguousarray(value) for key, value in tensors.items()},
        str(tmp_path / "lexical.safetensors"),
    )
    texts = generate_tickets(20, seed=2)["text"].tolist()

    loaded = LexicalModel.load(tmp_path)

    expected = regression.predict_proba(hstack([v.transform(texts) for v in vectorizers.values()]).tocsr())
    assert loaded.mask == ()  # it read unmasked text, so it still does
    assert np.allclose(loaded.probabilities(texts).numpy(), expected, atol=1e-5)


def test_a_lexical_model_of_an_unknown_format_is_refused(tmp_path):
    _fitted(generate_tickets(300, seed=1)).save(tmp_path)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(settings | {"format": 99}))

    with pytest.raises(ValueError, match=r"lexical\.json: unknown format 99"):
        LexicalModel.load(tmp_path)


def test_a_folder_without_a_lexical_model_has_none(tmp_path):
    assert LexicalModel.load(tmp_path) is None


def test_the_features_are_capped_so_the_saved_model_stays_small_as_data_grows(monkeypatch):
    monkeypatch.setattr(lexical, "MAX_FEATURES", 50)

    model = _fitted(generate_tickets(300, seed=1))

    assert model.feature_counts() == {"word": 50, "char": 50}


def test_a_lexical_half_for_another_label_set_is_refused_at_scoring(tmp_path):
    model = _fitted(generate_tickets(300, seed=1))
    model.labels = list(reversed(LABELS))
    model.save(tmp_path)

    with pytest.raises(ValueError, match=r"lexical model in .* predicts \['general_inquiry'"):
        load_lexical_half(tmp_path)


def test_the_model_card_says_how_the_model_blends_or_why_it_does_not():
    blended = lexical_note({"blend_weight": 0.6, "transformer_temperature": 2.314, "texts": 9})
    skipped = lexical_note({"skipped": "no training texts labelled general_inquiry"})

    assert "logits divided by 2.31, the temperature fitted on the validation split" in blended[1]
    assert "with 0.6 of a TF-IDF" in blended[1]
    assert skipped[1] == r"Published without its lexical half: no training texts labelled general\_inquiry."
    assert lexical_note(None) == []  # lexical_weight 0: a transformer alone, nothing to say


def test_hashing_in_worker_processes_gives_the_counts_of_one_process_row_for_row():
    texts = [*generate_tickets(400, seed=9)["text"].tolist(), "", "x", "Stack trace: NullPointerException"]

    alone = ngram_hashing.hashed_counts("char", texts, min_characters=sys.maxsize)
    spread = ngram_hashing.hashed_counts("char", texts, min_characters=0, workers=2)

    assert spread.shape == alone.shape == (len(texts), 2**ngram_hashing.HASH_BITS)
    assert alone.nnz > 0 and (spread != alone).nnz == 0
