"""`cai run RECIPE`: the stages of a recipe in order, in one run folder.

The stages and what each writes are in stages/registry.py (`cai stages` lists them); the
recipe's config class is the union of their sections, with `roles` and `stages` on top. Each
stage reads the previous ones' artifacts through the RunDir and is itself resumable, so a
killed run started again reuses every finished stage and resumes the one it was in. The
feedback model (in all its uses) and the SL-CAI model are loaded once for the run; every other
model is loaded by the stage that needs it and released before the next.
"""

from __future__ import annotations

import gc
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Callable, ClassVar

from pydantic import Field, create_model, field_validator, model_validator

from constitutional.artifacts import StageResult
from constitutional.config import StrictModel
from constitutional.errors import InputError
from constitutional.rundir import RunDir
from constitutional.stages import registry
from constitutional.stages.base import Models
from constitutional.stages.roles import RolesConfig, apply_roles, feedback_models


class RecipeBase(StrictModel):
    """A full recipe: `roles`, `stages`, and every registered stage's sections. With `roles`,
    the policy and the feedback model fill every section's model (stages/roles.py)."""
    STAGE_NAMES: ClassVar[tuple[str, ...]] = ()

    roles: RolesConfig | None = Field(None, description="The policy (the model aligned) and "
                                      "the feedback model (critic, labeler, judge); None: "
                                      "each section names its own model.")
    stages: list[str] = Field(default_factory=lambda: list(registry.DEFAULT_STAGES),
                              description="Stages this recipe runs, in order (see `cai "
                              "stages`).")

    @field_validator("stages")
    @classmethod
    def _known(cls, v):
        bad = [s for s in v if s not in cls.STAGE_NAMES]
        if bad:
            raise ValueError(f"unknown stage {bad[0]!r} (have: {', '.join(cls.STAGE_NAMES)})")
        return v

    @model_validator(mode="after")
    def _roles(self):
        apply_roles(self)
        return self


@lru_cache(maxsize=None)
def _recipe_class(table: tuple[tuple[str, ModuleType], ...]) -> type[RecipeBase]:
    fields: dict = {}
    for _, mod in table:
        for name, info in mod.Section.model_fields.items():
            fields.setdefault(name, (info.annotation, info))
    cls = create_model("RecipeConfig", __base__=RecipeBase, __doc__=RecipeBase.__doc__,
                       **fields)
    cls.STAGE_NAMES = tuple(name for name, _ in table)
    return cls


def recipe_class() -> type[RecipeBase]:
    """The recipe config class of the registry as it is now (a registered stage's sections
    are in it)."""
    return _recipe_class(tuple(registry.modules().items()))


RecipeConfig = recipe_class()


def select(stages: list[str], start: str | None, until: str | None) -> list[str]:
    for name in (start, until):
        if name is not None and name not in stages:
            raise InputError(f"unknown stage {name!r}; this recipe runs {', '.join(stages)}",
                             field="--from" if name == start else "--until")
    a = stages.index(start) if start else 0
    b = stages.index(until) + 1 if until else len(stages)
    if a >= b:
        raise InputError(f"--from {start} comes after --until {until}")
    return stages[a:b]


def models_used(cfg) -> list:
    """The models a recipe names for its stages (checked before any work starts)."""
    out = [cfg.sft.model, cfg.label.model, cfg.pm.model]
    out += [cfg.critique.critic] if cfg.critique.critic else []
    out += [cfg.selfalign.feedback] if cfg.selfalign.feedback and "self-align" in cfg.stages \
        else []
    out += [cfg.eval.judge] if "eval" in cfg.stages else []
    out += [cfg.rl.judge] if "rl" in cfg.stages and cfg.rl.reward == "judge" else []
    return out


def fake_models(cfg) -> None:
    """`--dry-run`: every model a stage loads as a backend goes to the fake backend (the
    training stages still train)."""
    for mod in registry.modules().values():
        for path in getattr(mod, "FAKE", ()):
            obj = cfg
            for part in path.split("."):
                obj = getattr(obj, part, None) if obj is not None else None
            if obj is not None:
                obj.backend = "fake"


def run_recipe(cfg, run_dir: str | Path | RunDir, load_backend: Callable,
               log: Callable[[str], None] = print, start: str | None = None,
               until: str | None = None) -> list[StageResult]:
    """`load_backend(model_cfg)` loads a generation/scoring backend for a stage."""
    run = RunDir(RunDir.of(run_dir).root, log)
    stages = select(cfg.stages, start, until)
    check_launch(stages)
    # The feedback model (critic, labeler, judge: often one model) and the SL-CAI model (it
    # answers in sl-cai, writes the pairs and answers in eval) are loaded once for the run.
    sl_answerer = cfg.critique.model.model_copy(update={"name": str(run.sl_model)})
    models = Models(load_backend, keep=[*feedback_models(cfg), sl_answerer])
    results: list[StageResult] = []
    for name in stages:
        results += registry.module(name).run(cfg, run, models)
        gc.collect()                      # release the stage's models before the next
    return results


def check_launch(stages: list[str]) -> None:
    """Under `accelerate launch` (several processes) only the Trainer-based training stages
    run: generation and labeling stages scale through vLLM or servers instead, and would
    otherwise be done once per process."""
    from constitutional.train.distributed import world_size

    if world_size() == 1:
        return
    allowed = [s for s, mod in registry.modules().items() if getattr(mod, "DISTRIBUTED", False)]
    others = [s for s in stages if s not in allowed]
    if others:
        raise InputError(
            f"under {world_size()} processes `cai run` runs only {' and '.join(allowed)}, not "
            f"{', '.join(others)}: run the other stages "
            "with one process, e.g. `cai run RECIPE --until label`, then `accelerate launch "
            "... -m constitutional.cli run RECIPE --from pm --until rl`",
            field="stages")
