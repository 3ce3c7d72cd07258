"""Stage `pm`: the preference model on the run's AI labels (pm/model).

The training itself (soft-label pairwise loss, optional PMP phase, held-out accuracy) is
train/pm.py; this module is its place in a recipe.
"""

from __future__ import annotations

from pydantic import Field

from constitutional.artifacts import StageResult
from constitutional.config import StrictModel
from constitutional.rundir import RunDir
from constitutional.stages.base import require_sl_model
from constitutional.train.pm import PMTrainConfig


class Section(StrictModel):
    pm: PMTrainConfig = Field(default_factory=PMTrainConfig)


FAKE = ()
DISTRIBUTED = True


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """The preference model on the labelled pairs (pm/model)."""
    from constitutional.train.pm import run_pm

    require_sl_model(run)
    return [run_pm(cfg.pm, run, run.log)]
