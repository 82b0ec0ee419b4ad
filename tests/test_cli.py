"""The `retrainer` command as a user runs it."""

import subprocess
import sys

import pandas as pd

from retrainer import LABELS


def _retrainer(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "retrainer.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def test_generate_tickets_writes_a_valid_batch(tmp_path):
    result = _retrainer("generate-tickets", "batch.csv", "--count", "30", "--seed", "4", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    tickets = pd.read_csv(tmp_path / "batch.csv")
    assert len(tickets) == 30 and set(tickets["label"]) == set(LABELS)


def test_demo_runs_both_cycles_on_the_packaged_model(tmp_path):
    result = _retrainer(
        "demo", "--workdir", "demo", "--first-batch", "150", "--second-batch", "60", cwd=tmp_path
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cycle 1: PROMOTED" in result.stdout
    assert "cycle 2: " in result.stdout and "on the same" in result.stdout
    assert "2 quarantined" in result.stdout
    assert (tmp_path / "demo" / "reports" / "cycle-2.md").is_file()
    production = list((tmp_path / "demo" / "production-model").iterdir())
    assert len(production) == 1 and (production[0] / "model.safetensors").is_file()
