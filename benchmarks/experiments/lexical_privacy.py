"""What a lexical half that cannot memorise a customer costs: out-of-fold macro-F1 of the lexical half
alone (TF-IDF + logistic regression, as `retrainer.core.lexical` fits it) on the NLBSE'24 issues, with
the vocabulary as today (n-grams in plain text, min document frequency 2), on masked text, with higher
minimum document frequencies, and with hashed features (no n-gram strings saved; buckets seen in fewer
than `min_df` training texts pruned).

    .venv/bin/python benchmarks/experiments/lexical_privacy.py --data ../shared/data/nlbse24/issues_train.csv
"""

import argparse
import sys
import time
from pathlib import Path

from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import SPLIT_SEED, stratified_folds

from retrainer.core import lexical, ngram_hashing
from retrainer.core.lexical import ANALYZERS, INVERSE_REGULARISATION
from retrainer.core.masking import mask_text

from baseline import NLBSE, load_issues


def vocabulary_features(train, test, min_df):
    blocks_train, blocks_test, sizes = [], [], []
    for analyzer, ngrams in ANALYZERS.values():
        vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=min_df)
        blocks_train.append(vectorizer.fit_transform(train))
        blocks_test.append(vectorizer.transform(test))
        sizes.append(len(vectorizer.vocabulary_))
    return hstack(blocks_train).tocsr(), hstack(blocks_test).tocsr(), sizes


def hashed_features(train, test, min_df, bits):
    """The product's hashed groups (`retrainer.core.lexical.fit_hashed_ngrams`) at `bits` and `min_df`."""
    lexical.MIN_DOCUMENT_FREQUENCY, ngram_hashing.HASH_BITS = min_df, bits
    ngram_hashing.PARALLEL_MIN_CHARACTERS = sys.maxsize  # worker processes would not see the patched bits
    blocks_train, blocks_test, sizes = [], [], []
    for name in ANALYZERS:
        group, train_features = lexical.fit_hashed_ngrams(name, train)
        blocks_train.append(train_features)
        blocks_test.append(group.transform(test))
        sizes.append(len(group.columns))
    return hstack(blocks_train).tocsr(), hstack(blocks_test).tocsr(), sizes


VARIANTS = {
    "vocabulary, raw text, min_df 2 (before)": (False, lambda tr, te: vocabulary_features(tr, te, 2)),
    "vocabulary, masked, min_df 2": (True, lambda tr, te: vocabulary_features(tr, te, 2)),
    "vocabulary, masked, min_df 3": (True, lambda tr, te: vocabulary_features(tr, te, 3)),
    "vocabulary, masked, min_df 5": (True, lambda tr, te: vocabulary_features(tr, te, 5)),
    "hashed 2^18, masked, min_df 3": (True, lambda tr, te: hashed_features(tr, te, 3, 18)),
    "hashed 2^20, masked, min_df 2": (True, lambda tr, te: hashed_features(tr, te, 2, 20)),
    "hashed 2^24, masked, min_df 2": (True, lambda tr, te: hashed_features(tr, te, 2, 24)),
    "hashed 2^24, masked, min_df 3": (True, lambda tr, te: hashed_features(tr, te, 3, 24)),
    "hashed 2^24, masked, min_df 5": (True, lambda tr, te: hashed_features(tr, te, 5, 24)),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=NLBSE)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default="", help="run the variants whose name contains this")
    args = parser.parse_args()
    issues = load_issues(args.data)
    masked = {text: mask_text(text) for text in issues["text"]}
    changed = sum(text != value for text, value in masked.items())
    print(f"{len(issues)} issues, {changed} changed by masking")
    folds = stratified_folds(issues, args.folds, SPLIT_SEED)
    only = [name for name in VARIANTS if not args.only or args.only in name]
    for name, (use_mask, featurise) in {name: VARIANTS[name] for name in only}.items():
        started, predicted, truth, fold_f1, sizes = time.perf_counter(), [], [], [], None
        for rest, test in folds:
            prepare = (lambda texts: [masked[t] for t in texts]) if use_mask else list
            x_train, x_test, sizes = featurise(prepare(rest["text"]), prepare(test["text"]))
            regression = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=3000).fit(
                x_train, rest["label"]
            )
            fold_predictions = regression.predict(x_test)
            fold_f1.append(f1_score(test["label"], fold_predictions, average="macro"))
            predicted.extend(fold_predictions)
            truth.extend(test["label"])
        overall = f1_score(truth, predicted, average="macro")
        print(
            f"{name:42s} macro-F1 {overall:.4f} (folds {min(fold_f1):.3f}-{max(fold_f1):.3f}) "
            f"features kept (last fold) {sizes}  {time.perf_counter() - started:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
