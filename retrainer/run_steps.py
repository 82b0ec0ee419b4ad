"""What each step of a retrain run returns, and the run record assembled from those values.

Plain data: the flow (`flows.retrain`) calls the steps and keeps their results in a `RunProgress`; the
record is assembled from it when the run ends, or when a step fails (the failed run's record).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from retrainer.core.agreement import LabelAgreement
from retrainer.core.eval_sample import EvalSampling
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.gate import Decision
from retrainer.core.training_plan import TrainingPlan
from retrainer.core.validation import ValidatedBatch
from retrainer.records import IngestionFacts, ProductionPointer, RunRecord, RunStatus, ScoringFacts


@dataclass(frozen=True)
class Ingestion:
    """What ingesting this run's new batches produced."""

    curated: pd.DataFrame | None
    dataset_version: str | None
    validated: list[ValidatedBatch]

    @property
    def sources(self) -> set[tuple[str, str]]:
        """This run's batches, as (key, ETag): the rows that are new in this run."""
        return {(result.key, result.etag) for result in self.validated}

    def facts(self) -> IngestionFacts:
        """The ingestion facts of the run record."""
        accepted = sum(len(result.accepted) for result in self.validated)
        merged = sum(len(result.merged) for result in self.validated)
        return IngestionFacts(
            batches_ingested=len(self.validated),
            rows_accepted=accepted,
            rows_merged=merged,
            rows_quarantined=sum(result.rows for result in self.validated) - accepted - merged,
            rows_erased=sum(result.erased for result in self.validated),
            # without the offending values: the record becomes the history, metrics.json and the reports
            problems=[problem for result in self.validated for problem in result.loggable_problems],
            dataset_version=self.dataset_version,
        )


@dataclass(frozen=True)
class Production:
    """The production pointer as this run read it, and the ETag a promotion's compare-and-swap expects."""

    pointer: ProductionPointer | None
    etag: str | None

    @property
    def version(self) -> str | None:
        return self.pointer.version if self.pointer else None


@dataclass(frozen=True)
class ScoredModel:
    """A model's evaluation on the eval rows, and the predictions it computed for them in this run (the
    others were known from earlier runs): the part stored under its version for the next run."""

    evaluation: ModelEvaluation
    new_predictions: pd.DataFrame  # `retrainer.core.known_predictions.COLUMNS`
    reused: int = 0  # eval tickets whose predictions were known

    @property
    def scored(self) -> int:
        """Eval tickets the model scored in this run."""
        return len(self.new_predictions)


@dataclass(frozen=True)
class Scores:
    """Both models scored on the same eval rows, and the gate's decision. The champion is the model
    production served when the run started (`Production`)."""

    challenger_version: str
    challenger: ScoredModel
    champion: ScoredModel | None
    decision: Decision
    agreement: LabelAgreement | None = None  # the champion against the labels new to it
    sampling: EvalSampling | None = None  # how the eval set was bounded

    def facts(self, production: Production) -> ScoringFacts:
        """The scoring facts of the run record; `production`: as the run read it (the champion's version)."""
        champion = self.champion.evaluation if self.champion else None
        challenger = self.challenger.evaluation
        return ScoringFacts(
            challenger_version=self.challenger_version,
            champion_version=production.version,
            champion_scored=self.champion.scored if self.champion else None,
            champion_reused=self.champion.reused if self.champion else None,
            challenger_scored=self.challenger.scored,
            challenger_reused=self.challenger.reused,
            eval_sampling=self.sampling,
            challenger=challenger.overall,
            champion=champion.overall if champion else None,
            challenger_new_data=challenger.new_data,
            champion_new_data=champion.new_data if champion else None,
            challenger_established=challenger.established,
            champion_established=champion.established if champion else None,
            label_agreement=self.agreement,
            suspect_batches=self.decision.suspect_batches,
            p_value=self.decision.p_value,
        )


@dataclass(frozen=True)
class Publication:
    """What the publish step did: the run's status, production afterwards, and why."""

    status: RunStatus
    production_version: str | None
    reasons: list[str] = field(default_factory=list)
    report_uris: list[str] = field(default_factory=list)


@dataclass
class RunProgress:
    """The steps' results so far: the run record is assembled from them, also when a step fails."""

    run_id: str
    forced_reason: str | None
    ingestion: Ingestion | None = None
    production: Production | None = None
    plan: TrainingPlan | None = None
    scores: Scores | None = None
    publication: Publication | None = None
    final: RunRecord | None = None

    def record(self, status: RunStatus, reasons: Sequence[str] = ()) -> RunRecord:
        """The run record from the steps done so far, with `status` and `reasons` of its ending."""
        published = self.publication
        production = self.production.version if self.production else None
        return RunRecord(
            status=status,
            run_id=self.run_id,
            forced_reason=self.forced_reason,
            production_version=published.production_version if published else production,
            report_uris=published.report_uris if published else [],
            training_plan=self.plan,
            reasons=[
                *(self.scores.decision.reasons if self.scores else []),
                *(published.reasons if published else []),
                *reasons,
            ],
            # dict(): the fields of each part as they are (their reports stay objects, not dumped to dicts)
            **(dict(self.ingestion.facts()) if self.ingestion else {}),
            **(dict(self.scores.facts(self.production)) if self.scores else {}),
        )
