"""Roles in a recipe: which model is aligned, and which model gives the feedback.

    policy     the model being aligned. It writes the initial answers that are critiqued and
               revised, the helpfulness mix, and (as the SL-CAI model) the pairs that are
               labelled; it is what SFT, the preference model and RL start from.
    feedback   the model that judges. Each of its uses can be pointed back at the policy on
               its own:
      critic   writes the critiques and revisions of SL-CAI (`policy`: the paper's
               self-critique, where the helpful model revises its own answers);
      labeler  labels the pairs (RL-CAI's AI feedback), and rates the answers of RL with
               `rl.reward: judge` (d-RLAIF);
      judge    compares the models in the evaluation and reads their evasiveness;
      writer   writes SELF-ALIGN's principle-driven and verbose answers (`policy`: the
               paper's self-alignment), from which the policy is engraved and cloned.

The paper's feedback model was a 52B pretrained model and its critic the 52B helpful model
itself; a 135M policy can be neither (its labels are position bias, its revisions meta-text), so
the default recipe gives those uses to a larger built-in model and keeps the policy small
enough to train on a laptop CPU.

A role fills the `model` of the sections that use it. A section's own model settings win
field by field, so `label.model.batch_size=8` keeps the feedback model with a smaller batch
and `label.model.name=X` gives the labeling alone to X.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from constitutional.config import ModelConfig, StrictModel

Use = Literal["policy", "feedback"]


class RolesConfig(StrictModel):
    policy: ModelConfig = Field(default_factory=ModelConfig, description="The model being "
                                "aligned: answers, helpfulness mix, SFT, PM and RL start.")
    feedback: ModelConfig = Field(
        default_factory=lambda: ModelConfig(name="qwen2.5-coder-1.5b", batch_size=32),
        description="The model that critiques, labels and judges (see the uses below).")
    critic: Use = Field("feedback", description="Who writes SL-CAI's critiques and "
                        "revisions (policy: the paper's self-critique).")
    labeler: Use = Field("feedback", description="Who labels the pairs (and rates the "
                         "answers for rl.reward: judge).")
    judge: Use = Field("feedback", description="Who judges the evaluation and evasiveness.")
    writer: Use = Field("feedback", description="Who writes SELF-ALIGN's principle-driven "
                        "and verbose answers (policy: the paper's self-alignment).")

    def model(self, use: Use) -> ModelConfig:
        return self.policy if use == "policy" else self.feedback


def merged(role: ModelConfig, own: ModelConfig) -> ModelConfig:
    """The role's model with the fields a section set itself laid on top."""
    return role.model_copy(update={k: getattr(own, k) for k in own.model_fields_set},
                           deep=True)


def apply_roles(cfg) -> None:
    """Fill every section's model from `cfg.roles` (a RecipeConfig); no-op without roles."""
    roles = cfg.roles
    if roles is None:
        return
    policy = roles.policy
    cfg.critique.model = merged(policy, cfg.critique.model)
    cfg.sft.model = merged(policy, cfg.sft.model)
    cfg.pm.model = merged(policy, cfg.pm.model)
    own = cfg.critique.critic
    if own is not None:
        cfg.critique.critic = merged(roles.model(roles.critic), own)
    elif roles.critic == "feedback":      # self-critique needs no second model: stays None
        cfg.critique.critic = roles.feedback.model_copy(deep=True)
    cfg.label.model = merged(roles.model(roles.labeler), cfg.label.model)
    cfg.rl.judge = merged(roles.model(roles.labeler), cfg.rl.judge)
    cfg.eval.judge = merged(roles.model(roles.judge), cfg.eval.judge)
    sa = cfg.selfalign
    sa.model = merged(policy, sa.model)
    if sa.feedback is not None:
        sa.feedback = merged(roles.model(roles.writer), sa.feedback)
    elif roles.writer == "feedback":
        sa.feedback = roles.feedback.model_copy(deep=True)


def feedback_models(cfg) -> list[ModelConfig]:
    """The models a recipe uses to give feedback (kept loaded across its stages)."""
    out = [cfg.label.model, cfg.eval.judge]
    out += [cfg.rl.judge] if cfg.rl.reward == "judge" else []
    out += [m for m in (cfg.critique.critic, cfg.selfalign.feedback) if m is not None]
    return out
