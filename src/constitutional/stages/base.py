"""The stage contract, and the models the stages of one run share.

A stage is a module in stages/ that exports:

    Section   a StrictModel: the recipe sections the stage reads, each a documented config
              class (`label: LabelConfig`); a recipe is the union of its stages' sections
    run(cfg, run: RunDir, models: Models) -> list[StageResult]
              `cfg` is the whole recipe, `run` names every path of the run folder (and holds
              the log), `models` loads backends; every stage has exactly this signature
    FAKE      dotted paths of the ModelConfigs `--dry-run` points at the fake backend
    DISTRIBUTED  True for the stages that run under `accelerate launch` (default False)

and is registered with one line in stages/registry.py. The first line of `run`'s docstring is
its line in `cai stages`. Resume is the stage's folder (artifacts.StageDir): a finished step
with the same fingerprint is reused, an unfinished one continues (`StageDir.reuse_or_reset`).
"""

from __future__ import annotations

from typing import Callable, Iterable

from constitutional.backends import BackendCache
from constitutional.errors import InputError
from constitutional.rundir import RunDir


class Models:
    """How the stages of a run get their backends.

    The models in `keep` (the feedback model in its uses, the SL-CAI model) are loaded once
    for the whole run; any other is loaded by the stage that asks and released when that
    stage lets go of it. `shared` is a cache that lives across stages, for models several
    stages in a row use (SELF-ALIGN's base model writes in three)."""

    def __init__(self, load: Callable, keep: Iterable = ()):
        self._plain = load
        self._kept = BackendCache(load)
        self.keep = {BackendCache.key(m) for m in keep}
        self.shared = BackendCache(self.load)

    def load(self, model_cfg):
        """A backend for this ModelConfig (the run's copy when it is one of `keep`)."""
        if BackendCache.key(model_cfg) in self.keep:
            return self._kept.get(model_cfg)
        return self._plain(model_cfg)

    def cache(self) -> BackendCache:
        """A cache for one stage: each model loaded once while the stage holds it."""
        return BackendCache(self.load)


def require_sl_model(run: RunDir) -> None:
    if not run.sl_model.is_dir():
        raise InputError("no SL-CAI model in this run yet: run the sl-cai stage first",
                         path=str(run.sl_model))
