"""Stage `rl`: RL-CAI from the SL-CAI model: PPO against the preference model (the paper),
DPO on the pairs, or TRL's GRPO / RLOO (rl/model).

The trainers are in train/ (ppo.py, dpo.py, grpo.py); the policy each starts from is this
run's SL-CAI model, passed as an argument. The online methods (PPO, GRPO, RLOO) take their
reward from the preference model (`reward: pm`, the paper) or straight from the feedback model
(`reward: judge`, d-RLAIF: train/judge_reward.py), which needs no label or pm stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from constitutional.artifacts import StageResult
from constitutional.config import ModelConfig, StrictModel
from constitutional.errors import InputError
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
    reward: Literal["pm", "judge"] = Field(
        "pm", description="The online methods' reward. pm: the preference model's score (the "
        "paper); judge: the feedback model rates each answer 1-10 against a choice principle, "
        "read from one forward pass and rescaled to [-1, 1] (d-RLAIF); no preference model.")
    judge: ModelConfig = Field(default_factory=ModelConfig, description="The model that "
                               "rates answers for reward: judge (roles: the labeler).")
    judge_constitution: str | None = Field(None, description="Whose choice principles the "
                                           "judge rates against (None: label.constitution).")

    @model_validator(mode="after")
    def _rloo_beta(self):
        if "beta" not in self.rloo.model_fields_set:
            self.rloo.beta = 0.05
        if self.reward == "judge" and self.method == "dpo":
            raise ValueError("reward: judge is for the online methods (ppo, grpo, rloo); dpo "
                             "learns from pairs, not from a reward")
        return self


class Section(StrictModel):
    rl: RLConfig = Field(default_factory=RLConfig)


FAKE = ("rl.judge",)
DISTRIBUTED = True


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """PPO (the paper), DPO, GRPO or RLOO from the SL-CAI model (rl/model)."""
    require_sl_model(run)
    online = getattr(cfg.rl, cfg.rl.method)
    if cfg.rl.reward == "pm" and cfg.rl.method != "dpo" and not online.reward_model \
            and not run.pm_model.is_dir():
        raise InputError("no preference model in this run yet: run the pm stage first, or "
                         "take the reward from the feedback model with rl.reward=judge",
                         path=str(run.pm_model))
    judge = judge_reward(cfg, models, online.seed) if cfg.rl.reward == "judge" else None
    return [run_rl(cfg.rl, run, str(run.sl_model), judge)]


def judge_reward(cfg, models, seed: int):
    """The feedback model's rating as the reward (rl.judge, rl.judge_constitution)."""
    from constitutional.constitution import load_constitution
    from constitutional.train.judge_reward import JudgeReward

    spec = cfg.rl.judge_constitution or cfg.label.constitution
    path, constitution = load_constitution(spec)
    constitution.require("choice", str(path))
    return JudgeReward(models.load(cfg.rl.judge), constitution, seed, model=cfg.rl.judge.name)


def run_rl(cfg: RLConfig, run: RunDir, policy: str, judge=None) -> StageResult:
    """`policy`: the model RL starts from (and, for DPO, the reference); `judge`: a
    JudgeReward for `reward: judge`."""
    extra = dict(reward_fn=judge, reward_inputs=judge.identity()) if judge else {}
    if cfg.method == "ppo":
        from constitutional.train.ppo_run import run_ppo

        ppo = cfg.ppo.model_copy(update={"model": cfg.ppo.model.model_copy(
            update={"name": policy})})
        return run_ppo(ppo, run, run.log, **extra)
    if cfg.method in ("grpo", "rloo"):
        from constitutional.train.grpo import run_grpo

        online = getattr(cfg, cfg.method)
        online = online.model_copy(update={"model": online.model.model_copy(
            update={"name": policy})})
        return run_grpo(online, run, run.log, method=cfg.method, **extra)
    from constitutional.train.dpo import run_dpo

    dpo = cfg.dpo.model_copy(update={"model": cfg.dpo.model.model_copy(
        update={"name": policy})})
    return run_dpo(dpo, run, run.log)
