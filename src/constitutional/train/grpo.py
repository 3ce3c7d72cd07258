"""Stage `rl` with method grpo or rloo: TRL's GRPOTrainer or RLOOTrainer with the preference
model as reward.

Alternatives to PPO users ask for: no value model; each prompt gets `num_generations`
answers and each answer's advantage is its preference-model score relative to the group's
(GRPO: minus the group mean, over the group's std; RLOO: minus the mean of the other answers
to the same prompt, the leave-one-out baseline). Both take the same settings here.
TRL generates with transformers' `generate` here (or vLLM where TRL is set up for it), so on a
CPU it is slower per sample than our PPO's rollouts; the point is the method, not the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import Field

from constitutional.artifacts import StageDir, StageResult, model_identity
from constitutional.config import NOT_RESULTS, results_config
from constitutional.datasource import digest
from constitutional.rundir import RunDir
from constitutional.train.common import (Schedule, TrainSettings, load_trainable, tensorboard_dir,
                                         trl_config, use_bf16)
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "rl"
RewardFn = Callable[[list, list], list[float]]


class GRPOTrainConfig(Schedule, TrainSettings):
    """TRL's GRPO (or RLOO) from the policy (`model`) with the preference model as reward."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (1e-4, 1e-6)
    RENAMED: ClassVar[dict[str, str]] = {"max_completion_length": "max_tokens"}

    reward_model: str | None = Field(None, description="Preference model (default: "
                                     "RUN/pm/model).", json_schema_extra=NOT_RESULTS)
    prompts: str = "bundled:redteam"
    limit: int | None = Field(None, ge=1)
    num_generations: int = Field(4, ge=2, description="Answers per prompt (the group).")
    max_tokens: int = Field(48, ge=1, description="Cap on new tokens per answer.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference policy "
                        "(rl.rloo defaults to 0.05, TRL's RLOO default).")
    batch_size: int = Field(8, ge=1, description="Answers per step over all processes (a "
                            "multiple of num_generations).")
    logging_steps: int = Field(1, ge=1, description="Log every N steps.")


def run_grpo(cfg: GRPOTrainConfig, run_dir: str | Path, log: Callable[[str], None] = print,
             reward_fn: RewardFn | None = None,
             method: Literal["grpo", "rloo"] = "grpo",
             reward_inputs: dict | None = None) -> StageResult:
    """`reward_fn` in place of the preference model; `reward_inputs`: what the fingerprint
    holds of it (e.g. `JudgeReward.identity()`)."""
    from constitutional.prompts_io import load_prompts
    run = RunDir.of(run_dir)
    pm_path = cfg.reward_model or str(run.pm_model)
    ppath, rows = load_prompts(cfg.prompts, cfg.limit)
    inputs = {"prompts": digest(ppath), **(reward_inputs or {"reward_model": model_identity(
        pm_path)}), "policy": model_identity(cfg.model.name)}

    def train(data, stage: StageDir, lg) -> list[dict]:
        fn = reward_fn or pm_reward_for_grpo(pm_path)
        trainer = make_trainer(cfg, data, stage.checkpoints, fn, method)
        return train_and_save(trainer, stage.checkpoints, stage.model, cfg.lora,
                              {"stage": STAGE, "kind": method}, lg)

    return run_training_stage(run.rl, {"method": method, **results_config(cfg)},
                              inputs, lambda: [{"prompt": r.messages, "id": r.id}
                                               for r in rows], train, log)


def pm_reward_for_grpo(pm_path: str) -> RewardFn:
    from constitutional.train.pm import PreferenceModel

    pm = PreferenceModel(pm_path)

    def preference_model(prompts, completions, **_):
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return pm.score(prompts, answers)
    return preference_model


def make_trainer(cfg: GRPOTrainConfig, rows: list[dict], checkpoints: Path, reward_fn,
                 method: Literal["grpo", "rloo"] = "grpo"):
    import datasets
    import trl

    from constitutional.train.distributed import per_device_batch, trainer_device_args

    datasets.disable_progress_bars()
    bf16 = use_bf16(cfg.precision)
    model, tok = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.lora else None,
                                bf16=bf16, seed=cfg.seed)
    tok.padding_side = "left"                  # generation
    config_cls, trainer_cls = (trl.GRPOConfig, trl.GRPOTrainer) if method == "grpo" else \
        (trl.RLOOConfig, trl.RLOOTrainer)
    args = trl_config(
        config_cls, cfg, checkpoints.parent, output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        num_generations=cfg.num_generations, max_completion_length=cfg.max_tokens,
        temperature=cfg.temperature, beta=cfg.beta, learning_rate=cfg.lr(), bf16=bf16,
        **trainer_device_args(), activation_checkpointing=False)
    data = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    with tensorboard_dir(checkpoints.parent):
        return trainer_cls(model=model, reward_funcs=reward_fn, args=args, train_dataset=data,
                           processing_class=tok)
