"""One retrain run in a process of its own, for fault-injection tests (``python -m tests.retrain_process``).

``--die-before-smoke-test`` SIGKILLs the process once the challenger is published and before its
smoke test and the pointer flip (the crash a killed worker or an OOM kill causes there); it forces the
promotion, so the run reaches the publish step whatever the gate would say.
Prints the run's final status on its last line.
"""

import argparse
import os
import signal

import flows.retrain
from retrainer.settings import TrainingConfig

# One epoch: the faults are injected around ingest and publish, and with no champion any model that
# passes the smoke test is promoted (two epochs took ~10 s more a run and proved nothing more).
QUICK = TrainingConfig(learning_rate=5e-3, num_train_epochs=1, lexical_weight=0.0)


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--die-before-smoke-test", action="store_true")
    args = parser.parse_args()
    forced = {}
    if args.die_before_smoke_test:
        flows.retrain.smoke_test_task = _die
        forced = {"force": True, "force_reason": "fault injection: killed before the smoke test"}
    state = flows.retrain.retrain(training=QUICK, return_state=True, **forced)
    print("status:", state.result().status if state.is_completed() else state.name, flush=True)


if __name__ == "__main__":
    main()
