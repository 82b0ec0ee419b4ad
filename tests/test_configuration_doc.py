"""docs/configuration.md is generated from the settings and must match them; no setting or environment
variable the code reads goes undocumented. Fast: no servers, no training."""

import ast
import re
from pathlib import Path

import pytest

from app import config_doc
from retrainer.settings import RetrainerSettings

REPOSITORY = Path(__file__).resolve().parent.parent
SOURCE_DIRECTORIES = ("retrainer", "tasks", "flows", "benchmarks")
"""The project's code whose environment reads must be documented (the tests set their own)."""
RETRAINER_NAME = re.compile(r"\bRETRAINER_[A-Z0-9]+(?:__?[A-Z0-9]+)*")


def test_the_configuration_doc_is_up_to_date():
    committed = config_doc.DOC_PATH.read_text() if config_doc.DOC_PATH.exists() else ""
    rendered = config_doc.render()

    if committed != rendered:
        pytest.fail(
            f"docs/configuration.md is stale ({_first_difference(committed, rendered)}); "
            f"regenerate it from retrainer/settings.py with `{config_doc.REGENERATE_COMMAND}`",
            pytrace=False,
        )


def test_every_setting_has_a_description_and_a_row():
    rendered = config_doc.render()
    undescribed = [
        f"{section}.{name}"
        for section, model in _settings_models()
        for name, field in model.model_fields.items()
        if not _is_section(field) and not (field.description or "").strip()
    ]

    assert not undescribed, f"settings without a description= in retrainer/settings.py: {undescribed}"
    missing = [name for name in config_doc.settings_environment_names() if f"| `{name}` |" not in rendered]
    assert not missing, f"settings without a row in the rendered document: {missing}"
    assert "| `RETRAINER_TRAINING__LEARNING_RATE` | float | `0.0001` | ≥ 0, ≤ 1 |" in rendered


def test_every_environment_variable_the_code_reads_is_documented():
    read = set()
    for path in _source_files():
        read |= _environment_reads(path.read_text(), str(path))

    undocumented = read - set(config_doc.OTHER_ENVIRONMENT_VARIABLES) - set(_settings_variables())
    assert not undocumented, (
        f"the code reads {sorted(undocumented)}: add them to OTHER_ENVIRONMENT_VARIABLES in "
        f"app/config_doc.py, then run `{config_doc.REGENERATE_COMMAND}`"
    )


def test_every_retrainer_variable_the_code_names_exists():
    known = set(_settings_variables()) | set(config_doc.OTHER_ENVIRONMENT_VARIABLES)
    unknown = {
        f"{name} ({path.relative_to(REPOSITORY)})"
        for path in _source_files()
        for name in RETRAINER_NAME.findall(path.read_text())
        if name not in known
    }

    assert not unknown, f"names of no setting or documented variable: {sorted(unknown)}"


def test_the_scanner_finds_each_way_of_reading_the_environment():
    source = """
import os
from os import environ, getenv
from prefect.settings import PREFECT_API_URL
SWITCH = "X_CONSTANT"
os.environ.get(SWITCH, "")
os.environ.get("X_GET")
os.getenv("X_GETENV")
getenv("X_BARE_GETENV")
environ["X_BARE_ENVIRON"]
os.environ["X_SUBSCRIPT"]
"X_CONTAINS" in os.environ
os.environ.setdefault("X_WRITTEN", "1")
os.environ["X_ASSIGNED"] = "1"
"""
    assert _environment_reads(source, "example.py") == {
        "X_CONSTANT",
        "X_GET",
        "X_GETENV",
        "X_BARE_GETENV",
        "X_BARE_ENVIRON",
        "X_SUBSCRIPT",
        "X_CONTAINS",
        "PREFECT_API_URL",
    }


def test_a_read_of_a_computed_name_is_refused_not_skipped():
    with pytest.raises(AssertionError, match=r"example\.py:3 reads"):
        _environment_reads("import os\nname = 'X_' + 'Y'\nos.environ.get(name)\n", "example.py")


def _environment_reads(source: str, filename: str) -> set[str]:
    """Names of the environment variables `source` reads: ``os.environ.get/[]/in``, ``os.getenv`` and
    Prefect settings imported by name (each is an environment variable of the same name)."""
    tree = ast.parse(source, filename)
    constants = _module_string_constants(tree)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prefect.settings":
            names |= {alias.name for alias in node.names if alias.name.startswith("PREFECT_")}
        key = _read_key(node)
        if key is None:
            continue
        name = key.value if isinstance(key, ast.Constant) else constants.get(getattr(key, "id", None))
        assert isinstance(name, str), (
            f"{filename}:{node.lineno} reads an environment variable whose name is not a literal or a "
            "module constant; make it one so it can be checked against the documented list"
        )
        names.add(name)
    return names


def _read_key(node: ast.AST) -> ast.expr | None:
    """The name argument of an environment read at `node`, or None when `node` is not one."""
    if isinstance(node, ast.Call) and node.args:
        function = node.func
        if _is_environ(getattr(function, "value", None)) and getattr(function, "attr", None) == "get":
            return node.args[0]
        if _dotted(function) in {"os.getenv", "getenv"}:
            return node.args[0]
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
        return node.slice
    membership = isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
    if membership and any(_is_environ(comparator) for comparator in node.comparators):
        return node.left
    return None


def _is_environ(node: ast.AST | None) -> bool:
    return node is not None and _dotted(node) in {"os.environ", "environ"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _module_string_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: statement.value.value
        for statement in tree.body
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
        for target in statement.targets
        if isinstance(target, ast.Name) and isinstance(statement.value.value, str)
    }


def _first_difference(committed: str, rendered: str) -> str:
    pairs = zip(committed.splitlines(), rendered.splitlines(), strict=False)
    for number, (line, expected) in enumerate(pairs, start=1):
        if line != expected:
            return f"line {number} is {line!r}, expected {expected!r}"
    return "missing" if not committed else "its length differs"


def _source_files() -> list[Path]:
    return sorted(path for directory in SOURCE_DIRECTORIES for path in (REPOSITORY / directory).rglob("*.py"))


def _settings_variables() -> list[str]:
    return config_doc.settings_environment_names() + config_doc.section_environment_names()


def _settings_models():
    yield "", RetrainerSettings
    for name, field in RetrainerSettings.model_fields.items():
        if _is_section(field):
            yield name, field.annotation


def _is_section(field) -> bool:
    return isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
