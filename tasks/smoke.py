"""Smoke test: the published artifacts, loaded back from S3 into a fresh cache, must work.

Run after upload and before the pointer flips: a model that does not load, predicts outside the
label set, or predicts differently after a reload never reaches production.
"""

import tempfile
from pathlib import Path

from pydantic import BaseModel

from retrainer.core.labels import LABELS
from retrainer.core.scoring import predict_probabilities
from retrainer.storage import ObjectStore
from tasks.common import once_task
from tasks.registry import CorruptVersionError, fetch_model

CANARY_TICKETS: tuple[tuple[str, str], ...] = (
    ("The app crashes every time I click save", "bug"),
    ("Getting a 500 error when I open the billing page", "bug"),
    ("Login page spins forever after the update and never loads", "bug"),
    ("Exported CSV has duplicated rows and wrong totals", "bug"),
    ("Please add a dark mode", "feature_request"),
    ("It would be great to export reports to Excel", "feature_request"),
    ("Could you support single sign-on with Okta?", "feature_request"),
    ("We would love keyboard shortcuts in the editor", "feature_request"),
    ("How do I change the email address on my account?", "general_inquiry"),
    ("What are your support hours on weekends?", "general_inquiry"),
    ("Can I get an invoice for last month?", "general_inquiry"),
    ("Is my data stored in the EU?", "general_inquiry"),
)


class SmokeResult(BaseModel):
    """The smoke test's verdict."""

    passed: bool
    reasons: list[str]
    canary_accuracy: float | None = None


def smoke_test(
    store: ObjectStore,
    version: str,
    reference_dir: Path,
    scratch_dir: Path,
    max_length: int,
    min_canary_accuracy: float,
) -> SmokeResult:
    """Load `version` from S3 into a fresh cache (verified against its recorded digests, as every load is)
    and check it against the local `reference_dir` model."""
    texts = canary_texts()
    try:
        with tempfile.TemporaryDirectory(prefix="smoke-", dir=scratch_dir) as fresh_cache:
            published = fetch_model(store, version, Path(fresh_cache))
            first = predict_probabilities(published, texts, max_length)
            reloaded = predict_probabilities(published, texts, max_length)
        reference = predict_probabilities(reference_dir, texts, max_length)
    except CorruptVersionError as error:  # the store does not hold what this run uploaded
        return SmokeResult(
            passed=False, reasons=[f"smoke test: {version} is corrupt as stored: {error.detail}"]
        )
    except Exception as error:  # any failure to load or predict is exactly what this test is for
        return SmokeResult(
            passed=False, reasons=[f"smoke test: {version} failed to load or predict: {error!r}"]
        )
    return canary_verdict(first, reloaded, min_canary_accuracy, reference)


def canary_texts() -> list[str]:
    """The canary tickets' texts, in `CANARY_TICKETS` order (what `canary_verdict` judges predictions of)."""
    return [text for text, _ in CANARY_TICKETS]


def canary_verdict(first, reloaded, min_canary_accuracy: float, reference=None) -> SmokeResult:
    """The verdict on a model's probabilities of `canary_texts()`, predicted twice (`first`, `reloaded`):
    labels in the label set, the same predictions both times, canary accuracy at least
    `min_canary_accuracy`, and, given the `reference` model's probabilities, its predictions.
    (`retrainer serve` checks a version it loads with this before swapping it in.)"""
    predicted = first.argmax(dim=-1).tolist()
    expected = [LABELS.index(label) for _, label in CANARY_TICKETS]
    accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
    problems = []
    if not all(0 <= label_id < len(LABELS) for label_id in predicted):
        problems.append("predictions outside the label set")
    if predicted != reloaded.argmax(dim=-1).tolist() or not first.allclose(reloaded, atol=1e-4):
        problems.append("predictions change between two loads of the published files")
    if reference is not None and predicted != reference.argmax(dim=-1).tolist():
        problems.append("the published files predict differently from the model that was trained")
    if accuracy < min_canary_accuracy:
        problems.append(f"canary accuracy {accuracy:.2f} is below the required {min_canary_accuracy:.2f}")
    summary = f"smoke test: {len(CANARY_TICKETS)} canary tickets, canary accuracy {accuracy:.2f}"
    return SmokeResult(passed=not problems, reasons=[summary, *problems], canary_accuracy=accuracy)


smoke_test_task = once_task(smoke_test, "smoke-test")
