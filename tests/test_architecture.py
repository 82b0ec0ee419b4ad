"""The layers stay layers: the ML core runs without Prefect or S3, and no layer imports one above it.

Layers, bottom up: `retrainer/core` (the ML core), the rest of `retrainer/` (what the layers share),
`tasks/`, `flows/`, `app/`. Imports are read from the source with `ast` (lazy imports inside functions
included), so a violation fails here, fast, before anything runs.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "retrainer.core"
FORBIDDEN_IN_CORE = ("prefect", "boto3", "botocore", "tasks", "flows", "app")
CORE_MAY_IMPORT = ("retrainer.settings", "retrainer.provenance")
"""The two shared modules the core may import: `retrainer.settings` holds `TrainingConfig` and
`GatePolicy` (plain pydantic models; the module reads the environment only when `RetrainerSettings` is
built, never at import, and imports no more than pydantic, `retrainer.core.text` and
`retrainer.core.masking`), and `retrainer.provenance` records library versions with
`importlib.metadata` (it imports nothing above the core). Both are imported by the Prefect-free run
below, so a dependency they grow shows there."""
LAYERS_ABOVE = {
    "retrainer": ("tasks", "flows", "app"),
    "tasks": ("flows", "app"),
    "flows": ("app",),
}
"""A package -> the packages above it, which it must not import."""


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in the source of a module of `package`, relative ones resolved,
    lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            module = node.module if not node.level else ".".join(filter(None, (base, node.module)))
            found.append((node.lineno, module))
    return found


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).parts[:-1])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(folder: str, forbidden) -> list[str]:
    """``file:line imports module`` for each import under `folder` for which `forbidden(module)`."""
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, module in imported_modules(path.read_text(), _package_of(path))
        if forbidden(module)
    ]


def _outside_the_core(module: str) -> bool:
    if any(_within(module, name) for name in CORE_MAY_IMPORT) or _within(module, CORE):
        return False
    return _within(module, "retrainer") or any(_within(module, name) for name in FORBIDDEN_IN_CORE)


def test_the_import_reader_sees_lazy_and_relative_imports():
    source = "import os\ndef f():\n    from .text import x\n    from .. import settings\n"

    found = imported_modules(source, "retrainer.core")

    assert sorted(found) == [(1, "os"), (3, "retrainer.core.text"), (4, "retrainer")]


def test_the_ml_core_imports_nothing_outside_it_but_settings_and_provenance():
    assert not _violations("retrainer/core", _outside_the_core)


@pytest.mark.parametrize(("package", "above"), LAYERS_ABOVE.items())
def test_no_layer_imports_a_layer_above_it(package, above):
    assert not _violations(package, lambda module: any(_within(module, name) for name in above))


CORE_WITHOUT_PREFECT_OR_S3 = """
import importlib, pkgutil, sys
from pathlib import Path

BLOCKED = ("prefect", "boto3", "botocore")

# As if they were not installed: importing one (or a module of one) raises ImportError, and
# importlib.util.find_spec answers None. Not a meta-path finder that raises: libraries probe with
# find_spec (accelerate asks for boto3 when transformers imports it), and a finder's error escapes the
# probe; a finder that answers with a module that fails to load makes accelerate import it and fail.
sys.modules.update(dict.fromkeys(BLOCKED))
try:
    import prefect  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("the block let prefect in")

import pandas as pd

import retrainer.core
from retrainer.core.scoring import predict_probabilities
from retrainer.core.training import TrainingSpec, fine_tune
from retrainer.settings import TrainingConfig

modules = [module.name for module in pkgutil.walk_packages(retrainer.core.__path__, "retrainer.core.")]
for name in modules:
    importlib.import_module(name)
texts = {
    "bug": "the app crashes when I save a file",
    "feature_request": "please add a dark mode to the settings",
    "general_inquiry": "how do I change the email of my account",
}
rows = pd.DataFrame(
    [{"text": f"{text} ({n})", "label": label} for n in range(4) for label, text in texts.items()]
)
config = TrainingConfig(num_train_epochs=1, learning_rate=5e-3, per_device_train_batch_size=4)
model_dir = fine_tune(rows, rows.iloc[:6], TrainingSpec(sys.argv[1], "main", config), Path(sys.argv[2]))
probabilities = predict_probabilities(model_dir, list(texts.values()), 128)
assert probabilities.shape == (3, 3), probabilities.shape
print(f"imported {len(modules)} core modules, trained and scored without", ", ".join(BLOCKED))
"""


@pytest.mark.training
def test_the_core_imports_trains_and_scores_where_prefect_and_boto3_are_not_installed(
    tiny_model_dir, tmp_path
):
    run = subprocess.run(
        [sys.executable, "-c", CORE_WITHOUT_PREFECT_OR_S3, str(tiny_model_dir), str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained and scored without prefect, boto3, botocore" in run.stdout
