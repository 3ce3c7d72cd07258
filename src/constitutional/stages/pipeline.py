"""`cai run RECIPE`: the whole Constitutional AI pipeline, stage after stage, in one run folder.

    sl-cai   critique -> revision, helpfulness mix, export, SFT -> sl_model/model
    pairs    the SL-CAI model answers each RL prompt twice
    label    the feedback model labels each pair (soft labels from option probabilities)
    pm       the preference model on those labels
    rl       PPO (the paper), DPO or GRPO from the SL-CAI model -> rl/model
    eval     Elo for harmlessness and helpfulness (base, SL-CAI, RL snapshots, RL), the
             critique ablation, evasiveness, benchmarks, PM accuracy -> eval/
    report   report.md and report.html

Each stage reads the previous one's artifact from the run folder and is itself resumable, so
a killed run started again reuses every finished stage and resumes the one it was in. The
policy of `pairs` and of `rl` is always this run's SL-CAI model; models are loaded by the
stage that needs them and released before the next.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, model_validator

from constitutional.artifacts import StageResult
from constitutional.config import StrictModel
from constitutional.errors import InputError
from constitutional.evals.run import EvalConfig
from constitutional.selfalign.pipeline import SelfAlignConfig
from constitutional.stages.label import LabelConfig
from constitutional.stages.pairs import PairsConfig
from constitutional.stages.roles import RolesConfig, apply_roles, feedback_models
from constitutional.stages.sl_cai import SLCAIConfig
from constitutional.train.dpo import DPOTrainConfig
from constitutional.train.grpo import GRPOTrainConfig, RLOOTrainConfig
from constitutional.train.pm import PMTrainConfig
from constitutional.train.ppo import PPOConfig

STAGES = ["sl-cai", "pairs", "label", "pm", "rl", "eval", "report"]
SELF_ALIGN_STAGES = ["self-instruct", "redteam", "self-align", "engrave", "verbose"]
NEEDS_SL_MODEL = {"pairs", "label", "pm", "rl"}


class RLConfig(StrictModel):
    method: Literal["ppo", "dpo", "grpo", "rloo"] = Field(
        "ppo", description="ppo: against the preference model, as the paper; dpo: on the "
        "labelled pairs directly (no preference model needed); grpo / rloo: TRL's GRPO or "
        "RLOO with the preference model as reward.")
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOTrainConfig = Field(default_factory=DPOTrainConfig)
    grpo: GRPOTrainConfig = Field(default_factory=GRPOTrainConfig)
    rloo: RLOOTrainConfig = Field(default_factory=RLOOTrainConfig, description="RLOO: the "
                                  "same settings as grpo.")


class RecipeConfig(SLCAIConfig):
    """A full recipe: SL-CAI's sections plus the RL-CAI stages. With `roles`, the policy and
    the feedback model fill every section's model (stages/roles.py)."""
    roles: RolesConfig | None = Field(None, description="The policy (the model aligned) and "
                                      "the feedback model (critic, labeler, judge); None: "
                                      "each section names its own model.")
    stages: list[Literal["sl-cai", "pairs", "label", "pm", "rl", "eval", "report",
                         "self-instruct", "redteam", "self-align", "engrave", "verbose"]] = Field(
        default_factory=lambda: list(STAGES), description="Stages this recipe runs, in order.")
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    pm: PMTrainConfig = Field(default_factory=PMTrainConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    selfalign: SelfAlignConfig = Field(default_factory=SelfAlignConfig, description="SELF-ALIGN"
                                       " (stages self-instruct ... verbose).")

    @model_validator(mode="after")
    def _roles(self):
        apply_roles(self)
        return self


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


def run_recipe(cfg: RecipeConfig, run_dir: str | Path, load_backend: Callable,
               log: Callable[[str], None] = print, start: str | None = None,
               until: str | None = None) -> list[StageResult]:
    """`load_backend(model_cfg)` loads a generation/scoring backend for a stage."""
    from constitutional.stages.label import run_label
    from constitutional.stages.pairs import run_pairs
    from constitutional.stages.sl_cai import run_sl_cai

    run_dir = Path(run_dir)
    stages = select(cfg.stages, start, until)
    check_launch(stages)
    sl_model = run_dir / "sl_model" / "model"
    results: list[StageResult] = []
    from constitutional.backends import BackendCache

    # The feedback model (critic, labeler, judge: often one model) and the SL-CAI model (it
    # answers in sl-cai, writes the pairs and answers in eval) are loaded once for the run and
    # kept across stages; every other model is loaded by the stage that needs it.
    feedback = BackendCache(load_backend)
    kept = {BackendCache.key(m) for m in feedback_models(cfg)} | \
        {BackendCache.key(cfg.critique.model.model_copy(update={"name": str(sl_model)}))}
    load_backend = (lambda m, _plain=load_backend:
                    feedback.get(m) if BackendCache.key(m) in kept else _plain(m))
    self_align_models = BackendCache(load_backend)   # SELF-ALIGN's models, each loaded once
    for name in stages:
        if name in NEEDS_SL_MODEL and not sl_model.is_dir():
            raise InputError("no SL-CAI model in this run yet: run the sl-cai stage first",
                             path=str(sl_model))
        if name == "sl-cai":
            out = run_sl_cai(cfg, run_dir, load_backend, log)
            results += [out[k] for k in ("critique", "helpful", "sl_model", "sl_answers")
                        if k in out]
        elif name == "pairs":
            pairs = cfg.pairs.model_copy(deep=True)
            pairs.model.name = str(sl_model)
            results.append(run_pairs(pairs, run_dir, lambda: load_backend(pairs.model), log))
        elif name == "label":
            results.append(run_label(cfg.label, run_dir,
                                     lambda: load_backend(cfg.label.model), log))
        elif name == "pm":
            from constitutional.train.pm import run_pm
            results.append(run_pm(cfg.pm, run_dir, log))
        elif name == "rl":
            results.append(run_rl(cfg.rl, run_dir, str(sl_model), log))
        elif name == "eval":
            from constitutional.evals.run import run_eval
            base = cfg.selfalign.model.name if set(cfg.stages) & set(SELF_ALIGN_STAGES) \
                else cfg.sft.model.name
            results.append(run_eval(cfg.eval, run_dir, load_backend, log,
                                    critique=cfg.critique, label=cfg.label,
                                    base=base, rl_method=cfg.rl.method))
        elif name == "report":
            results.append(run_report(run_dir))
        elif name in SELF_ALIGN_STAGES:
            from constitutional.selfalign.pipeline import run_self_align_stage
            results += run_self_align_stage(name, cfg.selfalign, run_dir, self_align_models,
                                            log)
        gc.collect()                      # release the stage's models before the next
    return results


def check_launch(stages: list[str]) -> None:
    """Under `accelerate launch` (several processes) only the Trainer-based training stages
    run: generation and labeling stages scale through vLLM or servers instead, and would
    otherwise be done once per process."""
    from constitutional.train.distributed import world_size

    if world_size() == 1:
        return
    others = [s for s in stages if s not in ("pm", "rl")]
    if others:
        raise InputError(
            f"under {world_size()} processes `cai run` runs only pm and rl, not "
            f"{', '.join(others)}: run the other stages "
            "with one process, e.g. `cai run RECIPE --until label`, then `accelerate launch "
            "... -m constitutional.cli run RECIPE --from pm --until rl`",
            field="stages")


def run_report(run_dir: Path) -> StageResult:
    import time

    from constitutional.report import write_report

    t0 = time.time()
    _, page = write_report(run_dir)
    return StageResult("report", page, 1, time.time() - t0, skipped=False)


def run_rl(cfg: RLConfig, run_dir: Path, sl_model: str, log) -> StageResult:
    if cfg.method == "ppo":
        from constitutional.train.ppo import run_ppo

        ppo = cfg.ppo.model_copy(deep=True)
        ppo.policy.name = sl_model
        return run_ppo(ppo, run_dir, log)
    if cfg.method in ("grpo", "rloo"):
        from constitutional.train.grpo import run_grpo

        online = getattr(cfg, cfg.method).model_copy(deep=True)
        online.model.name = sl_model
        return run_grpo(online, run_dir, log, method=cfg.method)
    from constitutional.train.dpo import run_dpo

    dpo = cfg.dpo.model_copy(deep=True)
    dpo.model.name = sl_model
    return run_dpo(dpo, run_dir, log)
