"""Renders docs/configuration.md from the settings models, so the reference cannot drift from the code.

    .venv/bin/python -m app.config_doc > docs/configuration.md

The field descriptions in `retrainer/settings.py` are the source of every row; the environment
variables that are not settings are listed here (`OTHER_ENVIRONMENT_VARIABLES`).
tests/test_configuration_doc.py fails when the committed file differs from what this renders, or when
the code reads an environment variable that neither the settings nor that list document.
"""

import json
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from retrainer.settings import (
    CLI_ENVIRONMENT_DEFAULTS,
    PRESET_BASE_MODELS,
    RENAMED_PRESETS,
    TRAINING_PRESETS,
    RetrainerSettings,
    TrainingConfig,
)

REGENERATE_COMMAND = ".venv/bin/python -m app.config_doc > docs/configuration.md"
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

OTHER_ENVIRONMENT_VARIABLES: dict[str, str] = {
    "RETRAINER_SLACK_WEBHOOK_URL": "Read by `retrainer setup`: a Slack incoming webhook, saved as the "
    "notification block `ticket-retrainer-alerts` that the automations alert through (failed runs, "
    "rejected batches). A secret, never printed. Wins over RETRAINER_ALERT_WEBHOOK_URL.",
    "RETRAINER_ALERT_WEBHOOK_URL": "Read by `retrainer setup`: a generic JSON webhook, saved as the "
    "block `ticket-retrainer-alerts` instead of a Slack one. A secret, never printed. Refused on a "
    "private, loopback or link-local address (Prefect's server would drop its alerts) unless "
    "RETRAINER_ALERT_WEBHOOK_PRIVATE=1.",
    "RETRAINER_ALERT_WEBHOOK_PRIVATE": "Read by `retrainer setup`: `1` saves the alert webhook block "
    "with private addresses allowed (the Prefect server must then reach the URL from its own network).",
    "RETRAINER_CHECKOUT_DIR": "Read on the worker by each deployment run's pull step (never at deploy "
    "time): the directory holding the flow code (`/app` in the worker image). Unset: the directory of "
    "the installed `flows` package.",
    "AWS_ACCESS_KEY_ID": "S3 credentials, read by boto3 with AWS_SECRET_ACCESS_KEY (and the rest of its "
    "standard chain: AWS_SESSION_TOKEN, AWS_PROFILE, shared config files, instance roles). "
    "`retrainer serve-s3` also uses this pair as its local S3's keys (unset: the demo's).",
    "AWS_SECRET_ACCESS_KEY": "See AWS_ACCESS_KEY_ID.",
    "PREFECT_API_URL": "The Prefect server (e.g. http://127.0.0.1:4200/api). Required by "
    "`retrainer setup` and `retrainer worker`; without it `retrainer run` and `retrainer demo` use a "
    "temporary in-process server that stops with them.",
    "PREFECT_API_AUTH_STRING": "`user:password` for a Prefect server with basic auth (its "
    "PREFECT_SERVER_API_AUTH_STRING). Never part of a message.",
    "PREFECT__FLOW_RUN_ID": "Set by Prefect's worker for each flow-run process (not by you); the pull "
    "step uses it to log a failure to the run it belongs to.",
}
"""Environment variables the project reads that are not `RetrainerSettings` fields: name -> meaning."""

SECTION_TITLES = {
    "s3": "Object store (S3)",
    "training": "Training",
    "gate": "Gate",
    "ingest": "Ingestion",
    "validation": "Validation",
    "serve": "Serving",
}
"""Titles of the nested settings' sections (a new section without one is titled by its field name)."""

_MIB = 2**20


def main() -> None:
    """Print the configuration reference (markdown) to stdout."""
    print(render(), end="")


def render() -> str:
    """The whole docs/configuration.md, as this checkout's settings describe it."""
    parts = [_introduction(), _general_section(), *_nested_sections(), _other_variables_section()]
    return "\n".join(parts)


def settings_environment_names() -> list[str]:
    """The environment variable of every setting (nested ones included), in document order."""
    names = [_env_name(name) for name, _ in _general_fields()]
    for section, model in _nested_models():
        names += [_env_name(section, name) for name in model.model_fields]
    return names


def section_environment_names() -> list[str]:
    """The variables that set a whole nested section as one JSON object (e.g. ``RETRAINER_TRAINING``)."""
    return [_env_name(section) for section, _ in _nested_models()]


def _introduction() -> str:
    config = RetrainerSettings.model_config
    prefix, delimiter = config["env_prefix"], config["env_nested_delimiter"]
    return f"""# Configuration

<!-- Generated from retrainer/settings.py by `{REGENERATE_COMMAND}`:
edit the field descriptions there, not this file (tests/test_configuration_doc.py fails when it is stale). -->

Every setting is an environment variable, read when a flow or command starts (never at import): the
`{prefix}` prefix, then the field name, with `{delimiter}` between a section and its field
(`{prefix}TRAINING{delimiter}LEARNING_RATE`). Names are not case-sensitive; optional settings treat an
empty value as unset. A deployment's runs read the environment of the worker that runs them. A run's own
parameters (`training`, `base_model`, `gate`, e.g. set in the Prefect UI) win over the environment.

S3 credentials are not settings: boto3 reads them from the standard AWS environment, shared config files
or an instance role (see [Other environment variables](#other-environment-variables)).
"""


def _general_fields() -> list[tuple[str, FieldInfo]]:
    return [
        (name, field)
        for name, field in RetrainerSettings.model_fields.items()
        if not _is_model(field.annotation)
    ]


def _nested_models() -> list[tuple[str, type[BaseModel]]]:
    return [
        (name, field.annotation)
        for name, field in RetrainerSettings.model_fields.items()
        if _is_model(field.annotation)
    ]


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _general_section() -> str:
    rows = [_row(_env_name(name), name, field) for name, field in _general_fields()]
    return "## General\n\n" + _table(rows)


def _nested_sections() -> list[str]:
    sections = []
    for section, model in _nested_models():
        title = SECTION_TITLES.get(section, section.replace("_", " ").capitalize())
        purpose = " ".join((model.__doc__ or "").split())
        rows = [_row(_env_name(section, name), name, field) for name, field in model.model_fields.items()]
        text = f"## {title}\n\n{purpose}\n\n{_table(rows)}"
        if model is TrainingConfig:
            text += "\n" + _presets_section()
        sections.append(text)
    return sections


def _presets_section() -> str:
    """Each preset's values where any preset differs from the field defaults."""
    defaults = TrainingConfig()
    preset_field = RetrainerSettings.model_fields["training_preset"]
    names = sorted(TRAINING_PRESETS, key=lambda name: name != preset_field.default)  # the default first
    changed = [
        field
        for field in TrainingConfig.model_fields
        if any(getattr(preset, field) != getattr(defaults, field) for preset in TRAINING_PRESETS.values())
    ]
    titles = [f"`{name}`" + (" (default)" if name == preset_field.default else "") for name in names]
    header = "| Setting | " + " | ".join(titles) + " |"
    lines = [header, "|" + " --- |" * (len(names) + 1), _preset_base_models_row(names)]
    for field in changed:
        values = [_value_text(field, getattr(TRAINING_PRESETS[name], field)) for name in names]
        lines.append(f"| `{_env_name('training', field)}` | " + " | ".join(values) + " |")
    renamed = ", ".join(f"`{old}` is now `{new}`" for old, new in RENAMED_PRESETS.items())
    renamed = f" Renamed presets are refused with their new name: {renamed}." if renamed else ""
    return (
        f"### Training presets\n\n`{_env_name('training_preset')}` (or `retrainer run --preset NAME`): "
        f"{preset_field.description}{renamed}\n\n"
        "The settings where the presets differ; every other training setting is the same in all of them "
        "(the defaults above):\n\n" + "\n".join(lines) + "\n"
    )


def _preset_base_models_row(names: list[str]) -> str:
    """The base model each preset trains: its own at a pinned commit, or the configured one."""
    cells = [
        f"`{own.hub_id}` at `{own.revision[:12]}`"
        if (own := PRESET_BASE_MODELS.get(name))
        else "the configured one"
        for name in names
    ]
    return f"| `{_env_name('base_model')}` | " + " | ".join(cells) + " |"


def _other_variables_section() -> str:
    rows = [f"| `{name}` | {_cell(meaning)} |" for name, meaning in OTHER_ENVIRONMENT_VARIABLES.items()]
    defaults = ", ".join(f"`{name}={value}`" for name, value in CLI_ENVIRONMENT_DEFAULTS.items())
    return (
        "## Other environment variables\n\nRead by the project but not settings:\n\n"
        "| Variable | Meaning |\n| --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"The `retrainer` command sets quiet, offline-friendly defaults for libraries when they are unset "
        f"(anything you set wins): {defaults}.\n"
    )


def _env_name(*path: str) -> str:
    config = RetrainerSettings.model_config
    return config["env_prefix"] + config["env_nested_delimiter"].join(path).upper()


def _table(rows: list[str]) -> str:
    header = "| Variable | Type | Default | Allowed | Description |\n| --- | --- | --- | --- | --- |\n"
    return header + "\n".join(rows) + "\n"


def _row(env_name: str, field_name: str, field: FieldInfo) -> str:
    default = _value_text(field_name, field.get_default(call_default_factory=True))
    cells = [f"`{env_name}`", _type_text(field.annotation), default, _constraints_text(field)]
    return "| " + " | ".join(cells) + f" | {_cell(field.description or '')} |"


def _type_text(annotation: object) -> str:
    """A reader's name for a field's type: `int`, `` `head` / `tail` ``, `JSON object`, `float, optional`."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " / ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional = ", optional" if len(kept) < len(get_args(annotation)) else ""
        return " or ".join(_type_text(arg) for arg in kept) + optional
    if origin is dict:
        return "JSON object"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _value_text(field_name: str, value: object) -> str:
    """A value as it is written in the environment, with a reading aid for sizes and durations."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, Path):
        return f"`{_home_relative(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    text = f"`{value}`"
    if isinstance(value, int) and field_name.endswith("_bytes") and value % _MIB == 0:
        return f"{text} ({value // _MIB} MiB)"
    if isinstance(value, int) and field_name.endswith("_s") and value >= 3600 and value % 3600 == 0:
        return f"{text} ({value // 3600} h)"
    return text


def _home_relative(path: Path) -> str:
    # The default lies under the home directory of whoever renders; the document must not depend on it.
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return path.as_posix()


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
"""Constraint attribute (pydantic keeps each bound as a metadata object with one of these) -> symbol."""


def _constraints_text(field: FieldInfo) -> str:
    """E.g. ``≥ 0, < 1``; validators and other metadata are not constraints a reader sets."""
    parts = []
    for constraint in field.metadata:
        for attribute, symbol in _BOUNDS.items():
            bound = getattr(constraint, attribute, None)
            if isinstance(bound, int | float):
                parts.append(f"{symbol} {bound:g}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    main()
