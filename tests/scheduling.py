"""How `make test` spreads the suite over its pytest-xdist workers (``--dist loadfile``).

A module runs whole on one worker, so its module fixtures (servers, trained models) start once, and
the modules that read the demo's run (the session fixture ``demo_run``, which trains the packaged MiniLM
for minutes) share one worker, so the demo trains once per test session, not once per worker.
(``--dist loadgroup`` with ``xdist_group`` marks would say this, but pytest 9.2 drops the group from the
test ids: pytest-dev/pytest-xdist#1386.)

Order: the production-topology test first, then the modules with the most tests first (xdist's own
order, which `make test` turns off with ``--no-loadscope-reorder`` to apply this one). Most long
modules have few tests, so they start late beside short ones; the topology test (one test, 3-7 minutes)
came last that way and ran alone for 7 minutes at the end (1,864 s in all on 2 cores). Starting all the
long modules first took 1,556 s: two long trainings ran at once.
"""

from collections import Counter

import pytest

DEMO_RUN_MODULES = ("tests/test_cli.py", "tests/test_model_behaviour.py")
DEMO_RUN_SCOPE = "demo-run"
FIRST_MODULE = "tests/test_production_topology.py"


def scope_of(module_path: str) -> str:
    """The unit of work a module belongs to: its path, or the demo's scope for the demo's readers."""
    return DEMO_RUN_SCOPE if module_path in DEMO_RUN_MODULES else module_path


def module_of(item: pytest.Item) -> str:
    """The test's module, as pytest-xdist names its scope (the node id up to the first ``::``)."""
    return item.nodeid.split("::", 1)[0]


def order_for_workers(items: list[pytest.Item]) -> None:
    """Sort `items` in place into the order the workers take their modules (see the module's docstring)."""
    tests_per_scope = Counter(scope_of(module_of(item)) for item in items)

    def rank(item: pytest.Item) -> tuple[bool, int, str]:
        scope = scope_of(module_of(item))
        return scope != FIRST_MODULE, -tests_per_scope[scope], scope

    items.sort(key=rank)  # stable: a module's tests keep their order


def check_demo_run_modules(items: list[pytest.Item]) -> None:
    """Refuse to run when a module reads ``demo_run`` but is missing from DEMO_RUN_MODULES (its worker
    would train the demo a second time)."""
    readers = {module_of(item) for item in items if "demo_run" in item.fixturenames}
    if missing := readers - set(DEMO_RUN_MODULES):
        raise pytest.UsageError(f"add {sorted(missing)} to DEMO_RUN_MODULES in tests/scheduling.py")


def module_scheduling(config: pytest.Config, log):
    """pytest-xdist's file scheduling with the demo's readers in one scope."""
    from xdist.scheduler import LoadFileScheduling  # here: the suite also runs where xdist is absent

    class ModuleScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(super()._split_scope(nodeid))

    return ModuleScheduling(config, log)
