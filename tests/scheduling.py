"""How `make test` spreads the suite over its pytest-xdist workers (``--dist loadfile``).

A module runs whole on one worker, so its module fixtures (servers, trained models) start once, and
the modules that read the demo's run (the session fixture ``demo_run``, which trains the packaged MiniLM
for minutes) share one worker, so the demo trains once per test session, not once per worker.
(``--dist loadgroup`` with ``xdist_group`` marks would say this, but pytest 9.2 drops the group from the
test ids: pytest-dev/pytest-xdist#1386.)

xdist hands out the modules with the most tests first. That also pairs well here: the few long modules
(the demo, the production topology, the browser run, DDP) have few tests, so they start late and mostly
beside short ones. Measured on 2 cores, the suite took 1,226 s in that order and 1,556 s with the
longest modules first, where two of them trained at once.
"""

import pytest

DEMO_RUN_MODULES = ("tests/test_cli.py", "tests/test_model_behaviour.py")
DEMO_RUN_SCOPE = "demo-run"


def scope_of(module_path: str) -> str:
    """The unit of work a module belongs to: its path, or the demo's scope for the demo's readers."""
    return DEMO_RUN_SCOPE if module_path in DEMO_RUN_MODULES else module_path


def check_demo_run_modules(items: list[pytest.Item]) -> None:
    """Refuse to run when a module reads ``demo_run`` but is missing from DEMO_RUN_MODULES (its worker
    would train the demo a second time)."""
    readers = {item.nodeid.split("::", 1)[0] for item in items if "demo_run" in item.fixturenames}
    if missing := readers - set(DEMO_RUN_MODULES):
        raise pytest.UsageError(f"add {sorted(missing)} to DEMO_RUN_MODULES in tests/scheduling.py")


def module_scheduling(config: pytest.Config, log):
    """pytest-xdist's file scheduling with the demo's readers in one scope."""
    from xdist.scheduler import LoadFileScheduling  # here: the suite also runs where xdist is absent

    class ModuleScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(super()._split_scope(nodeid))

    return ModuleScheduling(config, log)
