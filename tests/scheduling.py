"""How `make test` spreads the suite over its pytest-xdist workers (``--dist loadfile``).

A module runs whole on one worker, so its module fixtures (servers, trained models) start once. Two
changes to pytest-xdist's own file scheduling:

* the modules that read the demo's run (the session fixture ``demo_run``, which trains the packaged
  MiniLM for minutes) share one worker, so the demo trains once per test session, not once per worker.
  (``--dist loadgroup`` with ``xdist_group`` marks would say this, but pytest 9.2 drops the group from
  the test ids: pytest-dev/pytest-xdist#1386);
* the longest modules start first, so neither worker waits alone at the end on one long module.

Measured with `.ci/run` on fresh clones (2 cores, all passing): 1,556 s of tests in this order;
1,864 s in xdist's own order (most tests first), where the one-test production-topology module came
last and ran alone for 7 minutes; 1,947 s with only that module first, where the one-test
browser module came last instead. Two long modules training at once slow each other down, but a long
one alone at the end costs more.
"""

import pytest

DEMO_RUN_MODULES = ("tests/test_cli.py", "tests/test_model_behaviour.py")
DEMO_RUN_SCOPE = "demo-run"
# Measured on a 2-core machine, longest first (minutes each under two workers); the rest follow in
# name order. A stale list only costs time, never a result.
LONGEST_MODULES = (
    DEMO_RUN_SCOPE,
    "tests/test_production_topology.py",
    "tests/test_retrain_flow.py",
    "tests/test_chaos.py",
    "tests/test_interleaving.py",
    "tests/test_label_poisoning.py",
    "tests/test_serving.py",
    "tests/test_browser.py",
    "tests/test_setup_and_checkout.py",
    "tests/test_worker_stop.py",
    "tests/test_handoff.py",
    "tests/test_train_ddp.py",
    "tests/test_train.py",
    "tests/test_automations.py",
    "tests/test_cli_errors.py",
)


def module_of(item: pytest.Item) -> str:
    """The test's module, as pytest-xdist's file scheduling names it (the node id up to ``::``)."""
    return item.nodeid.split("::", 1)[0]


def scope_of(module_path: str) -> str:
    """The unit of work a module belongs to: its path, or the demo's scope for the demo's readers."""
    return DEMO_RUN_SCOPE if module_path in DEMO_RUN_MODULES else module_path


def order_longest_first(items: list[pytest.Item]) -> None:
    """Sort `items` (in place, stably) so the longest scopes come first; xdist hands out scopes in this
    order (with ``--no-loadscope-reorder``, which `make test` passes)."""
    rank = {scope: position for position, scope in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(scope_of(module_of(item)), len(rank)))


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
