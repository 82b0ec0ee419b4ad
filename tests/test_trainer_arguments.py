"""Which training settings are the Trainer's arguments is declared once, on the fields, and holds.

Fast: builds `TrainingArguments`, trains nothing.
"""

import pytest

from retrainer.core.trainer_arguments import training_arguments
from retrainer.settings import RecipeOnly, TrainerArgument, TrainingConfig


def _markers(name: str) -> list:
    return [
        marker
        for marker in TrainingConfig.model_fields[name].metadata
        if isinstance(marker, TrainerArgument | RecipeOnly)
    ]


def _another_value(name: str) -> object:
    """A valid value of a mapped field other than its default, so that a dropped one shows."""
    default = TrainingConfig.model_fields[name].default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.05
    pytest.fail(f"pick a non-default value for the Trainer argument {name!r} in this test")


MAPPED = [
    name
    for name in TrainingConfig.model_fields
    if any(isinstance(m, TrainerArgument) for m in _markers(name))
]


@pytest.mark.parametrize("name", TrainingConfig.model_fields)
def test_every_training_setting_is_a_trainer_argument_or_declared_recipe_only(name):
    assert len(_markers(name)) == 1, (
        f"TrainingConfig.{name} must carry exactly one of TrainerArgument(<TrainingArguments field>) "
        "(copied into the Trainer's arguments) or RecipeOnly(<the function that reads it>)"
    )


@pytest.mark.parametrize("name", MAPPED)
def test_every_trainer_argument_reaches_the_trainer_with_its_value(name, tmp_path):
    value = _another_value(name)
    [marker] = _markers(name)

    arguments = training_arguments(TrainingConfig(**{name: value}), tmp_path)

    assert (
        getattr(arguments, marker.name)
        == marker.value(value)
        != marker.value(TrainingConfig.model_fields[name].default)
    )
