"""The run's facts, in one vocabulary: the run record, and what is derived from it and stored.

A retrain run's steps return values; the flow assembles one `RunRecord` from them. The decision kept in
the history (`DecisionRecord`), the production pointer (`ProductionPointer`) and the published
``metrics.json`` are derived from that record, never filled in field by field.

Names: the *challenger* is the model this run trained, the *champion* the one in production when the run
started; *previous_version* is what production served before a change.
"""

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from retrainer.core.agreement import LabelAgreement
from retrainer.core.eval_sample import EvalSampling
from retrainer.core.evaluation import EvalReport
from retrainer.core.training_plan import TrainingPlan

RunStatus = Literal[
    "promoted",
    "forced",
    "kept",
    "lost-race",
    "smoke-failed",
    "no-new-data",
    "no-data",
    "validation-failed",
    "failed",
]
"""How a retrain run ended; the last two mean the run ended Failed (its reasons say why)."""

Action = Literal["promoted", "forced", "kept", "lost-race", "smoke-failed", "rolled-back"]
"""A decision about production, as kept in the history (rolled-back: by `retrainer models rollback`)."""

PRODUCTION_CHANGES: frozenset[str] = frozenset({"promoted", "forced", "rolled-back"})
# Decisions taken only after the challenger passed its smoke test (lost-race: passed, then lost the flip;
# rolled-back: the target was checked to be servable before the flip).
SMOKE_PASSED: frozenset[str] = frozenset({"promoted", "forced", "lost-race", "rolled-back"})


class ProductionPointer(BaseModel):
    """Which model version serves production, since when, and how it got there."""

    version: str
    accuracy: float | None
    dataset_version: str | None
    promoted_at: datetime
    run_id: str
    action: Action = "promoted"
    previous_version: str | None = None


class DecisionRecord(BaseModel):
    """One decision about production, as kept in the history.

    Records written before the names were unified said ``candidate_*`` and ``previous_production``;
    they still read (existing buckets keep their history).
    """

    run_id: str
    decided_at: datetime
    action: Action
    dataset_version: str | None
    challenger_version: str | None = Field(
        validation_alias=AliasChoices("challenger_version", "candidate_version")
    )
    challenger_accuracy: float | None = Field(
        None, validation_alias=AliasChoices("challenger_accuracy", "candidate_accuracy")
    )
    champion_version: str | None = None
    champion_accuracy: float | None = None
    p_value: float | None = None
    forced_reason: str | None = None
    production_version: str | None = None
    previous_version: str | None = Field(
        None, validation_alias=AliasChoices("previous_version", "previous_production")
    )
    suspect_batches: list[str] = Field(default_factory=list)  # named by the label check's alarm
    reasons: list[str]


class IngestionFacts(BaseModel):
    """The ingest step's part of the run record: what ingesting this run's new batches found."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field fails, it is not dropped

    batches_ingested: int = 0
    rows_accepted: int = 0
    rows_merged: int = 0  # same text and label as an earlier ticket: kept out of the curated data
    rows_quarantined: int = 0
    rows_erased: int = 0  # records of tickets erased on request, sent again: withheld, stored nowhere
    problems: list[str] = Field(default_factory=list)  # file, row and reason kind: no values, no ticket text
    dataset_version: str | None = None


class ScoringFacts(BaseModel):
    """The scoring step's part of the run record: both models on the same eval rows, and the gate's
    figures."""

    model_config = ConfigDict(extra="forbid")

    challenger_version: str | None = None
    champion_version: str | None = None  # what production served when the run started
    # eval tickets the champion was scored on in this run, and those whose predictions it had made before
    champion_scored: int | None = None
    champion_reused: int | None = None
    # the same for the challenger: reused are those scored where it was trained (a gpu pool deployment)
    challenger_scored: int | None = None
    challenger_reused: int | None = None
    eval_sampling: EvalSampling | None = None  # how the eval set was bounded (`gate.max_eval_tickets`)
    challenger: EvalReport | None = None
    champion: EvalReport | None = None
    challenger_new_data: EvalReport | None = None
    champion_new_data: EvalReport | None = None
    # on the eval tickets from batches the champion was trained on (labelled before it and this run)
    challenger_established: EvalReport | None = None
    champion_established: EvalReport | None = None
    label_agreement: LabelAgreement | None = None  # the champion against the labels new to it (counts)
    suspect_batches: list[str] = Field(default_factory=list)  # named by the label check's alarm
    p_value: float | None = None


class RunRecord(ScoringFacts, IngestionFacts):
    """The result of one retrain run (the flow's return value), assembled from what its steps returned:
    the facts of the ingest and scoring steps (declared in their parts above), and the run's own."""

    status: RunStatus
    run_id: str
    training_plan: TrainingPlan | None = None  # full or incremental (from the champion), and why
    forced_reason: str | None = None
    production_version: str | None = None
    report_uris: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)

    @property
    def challenger_accuracy(self) -> float | None:
        return self.challenger.accuracy if self.challenger else None

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion.accuracy if self.champion else None

    @property
    def eval_examples(self) -> int:
        return self.challenger.examples if self.challenger else 0

    def decision_record(self, decided_at: datetime) -> DecisionRecord:
        """This run's decision, for the history (only a run that reached the gate has one)."""
        return DecisionRecord(
            decided_at=decided_at,
            action=self.status,
            challenger_accuracy=self.challenger_accuracy,
            champion_accuracy=self.champion_accuracy,
            previous_version=self.champion_version,  # the champion is what production served before
            **self.model_dump(include=_DECISION_FIELDS),
        )

    def production_pointer(
        self, promoted_at: datetime, action: Literal["promoted", "forced"]
    ) -> ProductionPointer:
        """The pointer that puts this run's challenger in production."""
        return ProductionPointer(
            version=self.challenger_version,
            accuracy=self.challenger_accuracy,
            dataset_version=self.dataset_version,
            promoted_at=promoted_at,
            run_id=self.run_id,
            action=action,
            previous_version=self.champion_version,
        )

    def label_check_summary(self) -> dict | None:
        """The label check's figures (``metrics.json``): the champion's agreement with the labels new to it
        and with the established ones, per new batch, both models on the established eval tickets, and
        the batches an alarm named. Counts and shares only (None: no champion to check against)."""
        if self.label_agreement is None:
            return None
        return {
            **self.label_agreement.summary(),
            "batches": {key: batch.agreement for key, batch in self.label_agreement.batches.items()},
            "challenger_established_accuracy": _accuracy(self.challenger_established),
            "champion_established_accuracy": _accuracy(self.champion_established),
            "suspect_batches": self.suspect_batches,
        }

    def decision_summary(self) -> dict:
        """The decision as published beside the weights (``metrics.json``, the model card)."""
        return {
            "run_id": self.run_id,
            "champion_version": self.champion_version,
            "champion_accuracy": self.champion_accuracy,
            "p_value": self.p_value,
            "forced_reason": self.forced_reason,
            "reasons": self.reasons,
        }


def _accuracy(report: EvalReport | None) -> float | None:
    return report.accuracy if report else None


_DECISION_FIELDS = DecisionRecord.model_fields.keys() & RunRecord.model_fields.keys()
"""What a history entry copies from the run record: the fields the two records share by name."""
