"""Stage `rl`: RL-CAI from the SL-CAI model: PPO against the preference model (the paper),
DPO on the pairs, or TRL's GRPO / RLOO (rl/model).

The trainers are in train/ (ppo.py, dpo.py, grpo.py); the policy each starts from is this
run's SL-CAI model, passed as an argument.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from constitutional.artifacts import StageResult
from constitutional.config import StrictModel
from constitutional.rundir import RunDir
from constitutional.stages.base import require_sl_model
from constitutional.train.dpo import DPOTrainConfig
from constitutional.train.grpo import GRPOTrainConfig
from constitutional.train.ppo import PPOConfig


class RLConfig(StrictModel):
    method: Literal["ppo", "dpo", "grpo", "rloo"] = Field(
        "ppo", description="ppo: against the preference model, as the paper; dpo: on the "
        "labelled pairs directly (no preference model needed); grpo / rloo: TRL's GRPO or "
        "RLOO with the preference model as reward.")
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOTrainConfig = Field(default_factory=DPOTrainConfig)
    grpo: GRPOTrainConfig = Field(default_factory=GRPOTrainConfig)
    rloo: GRPOTrainConfig = Field(default_factory=GRPOTrainConfig, description="RLOO: the "
                                  "same settings as grpo; beta defaults to 0.05 (TRL's).")

    @model_validator(mode="after")
    def _rloo_beta(self):
        if "beta" not in self.rloo.model_fields_set:
            self.rloo.beta = 0.05
        return self


class Section(StrictModel):
    rl: RLConfig = Field(default_factory=RLConfig)


FAKE = ()
DISTRIBUTED = True


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """PPO (the paper), DPO, GRPO or RLOO from the SL-CAI model (rl/model)."""
    require_sl_model(run)
    return [run_rl(cfg.rl, run, str(run.sl_model))]


def run_rl(cfg: RLConfig, run: RunDir, policy: str) -> StageResult:
    """`policy`: the model RL starts from (and, for DPO, the reference)."""
    if cfg.method == "ppo":
        from constitutional.train.ppo_run import run_ppo

        ppo = cfg.ppo.model_copy(update={"model": cfg.ppo.model.model_copy(
            update={"name": policy})})
        return run_ppo(ppo, run, run.log)
    if cfg.method in ("grpo", "rloo"):
        from constitutional.train.grpo import run_grpo

        online = getattr(cfg, cfg.method)
        online = online.model_copy(update={"model": online.model.model_copy(
            update={"name": policy})})
        return run_grpo(online, run, run.log, method=cfg.method)
    from constitutional.train.dpo import run_dpo

    dpo = cfg.dpo.model_copy(update={"model": cfg.dpo.model.model_copy(
        update={"name": policy})})
    return run_dpo(dpo, run, run.log)
