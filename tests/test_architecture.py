"""The layers stay layers: the ML core runs without Prefect or S3, and no layer imports one above it.

Layers, bottom up: `retrainer/core` (the ML core), the rest of `retrainer/` (what the layers share:
settings, the store contract and its two stores, records, reports), `tasks/`, `flows/`, `app/`.
`benchmarks/` stands on top of them all. Imports are read from the source with `ast` (lazy imports
inside functions included), so a violation fails here, fast, before anything runs. The rules:

- no layer imports one above it, and the core imports nothing of Prefect, boto3 or the layers;
- nothing under `retrainer/` imports Prefect: Prefect-facing helpers live beside the code that uses them;
- `retrainer/`'s ground floor holds only the modules declared in `GROUND_FLOOR`, each of one kind;
- the store contract stands alone: the S3 store and the folder store import it, never each other;
- a task step imports no other step, only the task modules that own shared state (`SHARED_TASK_MODULES`);
- the product imports neither `tests/` nor `benchmarks/`; benchmarks import no private name and no test;
- no import cycle anywhere.
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
    "retrainer": ("tasks", "flows", "app", "benchmarks", "tests"),
    "tasks": ("flows", "app", "benchmarks", "tests"),
    "flows": ("app", "benchmarks", "tests"),
    "app": ("benchmarks", "tests"),
}
"""A package -> the packages above it, which it must not import (the product never imports its benchmarks or
its tests)."""
PACKAGES = ("retrainer", "tasks", "flows", "app", "benchmarks")
GROUND_FLOOR = {
    "core": "the ML core: labels, text, batch files, validation rules, training, scoring, gate",
    "storage": "the store contract and its two stores, S3 and a local folder",
    "report": "the run report, the model card and its pictures",
    "settings": "typed configuration, read when a flow starts",
    "records": "the run record and what is derived from it: history entry, pointer, metrics",
    "run_steps": "the typed values the retrain flow's steps return, assembled into the run record",
    "resources": "settings and a store, injected into a flow",
    "provenance": "the code and library versions recorded with every model",
    "retention": "the bucket's lifecycle rules: how long what is kept",
    "id_index": "which ticket ids each stored object holds, written by every writer, read by an erasure",
}
"""The modules and packages directly under `retrainer/`, each of one kind (what the layers share). Prefect
helpers, the demo's local S3 and sample tickets, and the configuration-doc generator live in `app/`."""
SHARED_TASK_MODULES = (
    "tasks.common",
    "tasks.manifest",
    "tasks.dataset",
    "tasks.registry",
    "tasks.checkpoints",
    "tasks.training_progress",
)
"""Task modules that own shared state or policy (retries, the manifest, curated parts, the model registry,
checkpoints, the Trainer's progress in the run): any task step may import them; they import only
`tasks.common` of the task modules. Every other task module is a step, which imports no other step."""
STORES = ("retrainer.storage.s3", "retrainer.storage.folder")
STORE_CONTRACT = "retrainer.storage.contract"


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


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _product_sources() -> dict[str, Path]:
    """Module name -> source file, for every module of the product and its benchmarks."""
    return {_module_of(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the product it imports (a `from m import name` of a submodule counts as
    importing the submodule; a module's own package is not an edge)."""
    sources = _product_sources()

    def known(module: str) -> str | None:
        while module and module not in sources:
            module = module.rpartition(".")[0]
        return module or None

    graph = {}
    for module, path in sources.items():
        package = _package_of(path)
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                (_, base), *_ = imported_modules(ast.unparse(node), package)
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            edges |= {known(name) for name in names}
        graph[module] = {edge for edge in edges - {None, module} if not module.startswith(edge + ".")}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


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


def test_nothing_under_retrainer_imports_prefect():
    assert not _violations("retrainer", lambda module: _within(module, "prefect"))


def test_the_ground_floor_holds_only_its_declared_modules():
    found = {path.stem if path.is_file() else path.name for path in (ROOT / "retrainer").iterdir()}
    found = {name for name in found if not name.startswith(("_", "."))} - {"py"}

    assert found == set(GROUND_FLOOR)


def test_the_two_stores_import_the_contract_and_not_each_other():
    graph = import_graph()

    for store in STORES:
        assert STORE_CONTRACT in graph[store]
        assert not graph[store] & {"retrainer.storage", *STORES}, store
    assert not any(_within(module, "boto3") for _, module in _imports_of("retrainer/storage/folder.py"))
    assert not any(
        _within(module, "retrainer.storage") for _, module in _imports_of("retrainer/storage/contract.py")
    )


def _imports_of(relative: str) -> list[tuple[int, str]]:
    path = ROOT / relative
    return imported_modules(path.read_text(), _package_of(path))


def test_a_task_step_imports_no_other_step():
    graph = import_graph()
    sideways = {
        (module, other)
        for module, edges in graph.items()
        if _within(module, "tasks")
        for other in edges
        if _within(other, "tasks") and other not in SHARED_TASK_MODULES and other != "tasks"
    }
    shared_beyond_common = {
        (module, other)
        for module in SHARED_TASK_MODULES
        for other in graph.get(module, ())
        if _within(other, "tasks") and other != "tasks.common"
    }

    assert not sideways
    assert not shared_beyond_common


def test_benchmarks_import_no_private_name_of_the_product():
    private = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                private += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]

    assert not private


def test_there_is_no_import_cycle():
    assert not import_cycles(import_graph())


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert import_cycles(graph) == [["a", "b", "c"]]


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
