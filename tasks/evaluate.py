"""Evaluate: score a model (champion or challenger) on the gate's eval split, as a Prefect task.

Both models are scored in the same run, on the same rows, so their numbers are comparable
(`retrainer.core.scoring`).
"""

from retrainer.core.scoring import score_model
from tasks.common import once_task

score_model_task = once_task(score_model, "score-model")
