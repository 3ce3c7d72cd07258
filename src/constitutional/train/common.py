"""What every trainer shares: the training settings, LoRA, precision, and one model loader.

SFT, the preference model, DPO, GRPO / RLOO and PPO each declare their config as
`TrainSettings` (the model trained, LoRA, learning rate, batch size, precision, seed, the
trackers that watch it) plus, for the four TRL trainers, `Schedule` (epochs, max steps,
accumulation, warm-up, checkpoint and logging steps, and `trainer_args`, any other TRL
argument), and their own fields. `trl_config` builds a TRL config from them. A field has one
name everywhere: `model` is the model being trained, `max_tokens` the cap on new tokens of a
rollout (as in `sampling.max_tokens`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from constitutional.config import NOT_RESULTS, ModelConfig, StrictModel
from constitutional.errors import InputError

# report_to names (transformers' and accelerate's) -> the module that must be installed
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb",
            "mlflow": "mlflow", "comet_ml": "comet_ml", "clearml": "clearml",
            "swanlab": "swanlab"}
Tracker = Literal["tensorboard", "trackio", "wandb", "mlflow", "comet_ml", "clearml", "swanlab"]


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, description="Rank of the adapters.")
    alpha: int = Field(32, ge=1, description="Scale numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input. 0 by "
                           "default: on a CPU it copies every adapted input and cost a third "
                           "of the step time in bench/train.py.")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get "
                                            "adapters ('all-linear' or a list of names).")

    def wrap(self, model, task_type: str):
        """The model with adapters (peft); task_type CAUSAL_LM, or SEQ_CLS (head trained too)."""
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=self.target_modules, task_type=task_type))


class TrainSettings(StrictModel):
    """The settings every trainer has. `DEFAULT_LR` is (LoRA, full fine-tuning)."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (2e-4, 1e-5)

    model: ModelConfig = Field(default_factory=ModelConfig, description="The model trained "
                               "(`cai run` fills in this run's model where a stage needs it).")
    lora: bool = Field(True, description="Train LoRA adapters (merged at the end) instead of "
                       "all weights.")
    lora_settings: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float | None = Field(None, gt=0, description="None: the trainer's default "
                                        "(LoRA / full): SFT 2e-4 / 1e-5, PM 1e-4 / 1e-5, "
                                        "DPO 5e-5 / 5e-7, GRPO, RLOO and PPO 1e-4 / "
                                        "1e-6.")
    batch_size: int = Field(8, ge=1, description="Examples (pairs, rollouts) per step over "
                            "all processes; each process takes an equal share.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the CPU has bf16 units or on GPU.")
    seed: int = 0
    report_to: list[Tracker] = Field(
        default_factory=list, json_schema_extra=NOT_RESULTS, description="Trackers that "
        "watch the training as it runs, any you have installed: tensorboard (events in "
        "RUN/<stage>/tensorboard/), trackio, wandb, mlflow, comet_ml, clearml, swanlab. "
        "Off by default.")
    run_name: str | None = Field(None, json_schema_extra=NOT_RESULTS, description="The run's "
                                 "name in the trackers (default: <run folder>-<stage>).")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, v: list[str]) -> list[str]:
        missing = [t for t in v if importlib.util.find_spec(TRACKERS[t]) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} not installed (pip install "
                             f"{' '.join(missing)})")
        return v

    def lr(self) -> float:
        return self.learning_rate or self.DEFAULT_LR[0 if self.lora else 1]


class Schedule(StrictModel):
    """The schedule of the Trainer-based trainers (SFT, PM, DPO, GRPO / RLOO)."""
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs).")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated per optimizer update.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume point).")
    logging_steps: int = Field(5, ge=1, description="Log the loss every N steps.")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other argument of the TRL config (SFTConfig, "
        "RewardConfig, DPOConfig, GRPOConfig, RLOOConfig), passed as is: schedulers, weight "
        "decay, `deepspeed`, GRPO's `use_vllm`, ... An argument that a field above sets is "
        "set there instead; `output_dir` is the run folder's.")

    def schedule_args(self) -> dict:
        """The TRL/Trainer arguments the schedule's fields set."""
        return dict(num_train_epochs=self.epochs, max_steps=self.max_steps,
                    gradient_accumulation_steps=self.grad_accum,
                    warmup_steps=self.warmup_steps, save_steps=self.save_steps,
                    logging_steps=self.logging_steps, save_total_limit=2)


# TRL arguments that a field of ours sets: `trainer_args` may not set them too
FIELD_OF = {"learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
            "num_train_epochs": "epochs", "max_steps": "max_steps",
            "gradient_accumulation_steps": "grad_accum", "warmup_steps": "warmup_steps",
            "save_steps": "save_steps", "logging_steps": "logging_steps", "seed": "seed",
            "bf16": "precision", "report_to": "report_to", "run_name": "run_name",
            "max_length": "max_length", "beta": "beta", "num_generations": "num_generations",
            "max_completion_length": "max_tokens", "temperature": "temperature"}
RUN_FOLDER_ARGS = {"output_dir", "resume_from_checkpoint", "save_strategy"}


def trl_config(config_cls, cfg, stage_dir: Path, **ours):
    """The TRL config of a trainer: the arguments our settings set (`ours`, the schedule,
    seed, tracking), then the user's `trainer_args`, checked against both and against the
    config class, with every refusal as a one-line error."""
    args = {**ours, **cfg.schedule_args(), "seed": cfg.seed, "report_to": list(cfg.report_to),
            "run_name": cfg.run_name or f"{stage_dir.parent.name}-{stage_dir.name}",
            "project": "constitutional"}
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key, value in cfg.trainer_args.items():
        where = f"trainer_args.{key}"
        if key in RUN_FOLDER_ARGS:
            raise InputError("set by the run folder (resume depends on it)", field=where)
        if key in FIELD_OF and key in args:
            raise InputError(f"set it as `{FIELD_OF[key]}` instead", field=where)
        if key not in known:
            raise InputError(f"not an argument of {config_cls.__name__}", field=where)
        args[key] = value
    try:
        return config_cls(**args)
    except (ValueError, TypeError) as e:
        raise InputError(f"{config_cls.__name__} refused the arguments: "
                         f"{str(e).splitlines()[0]}", field="trainer_args") from None


@contextlib.contextmanager
def tensorboard_dir(folder: Path):
    """Where transformers' TensorBoard callback writes, while a Trainer is being built (it
    reads TENSORBOARD_LOGGING_DIR then): RUN/<stage>/tensorboard, not under checkpoints/."""
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder / "tensorboard")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def use_bf16(precision: str) -> bool:
    import torch

    from constitutional.backends.transformers_backend import cpu_has_bf16

    if precision != "auto":
        return precision == "bf16"
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported() or \
        (not torch.cuda.is_available() and cpu_has_bf16())


def load_trainable(model: ModelConfig, *, lora: LoraSettings | None, bf16: bool, seed: int,
                   head: Literal["lm", "score"] = "lm", path: str | None = None):
    """The one loader of a model to train: (model, tokenizer), in train mode.

    `head="score"` loads a sequence-classification model with one output (the preference
    model, PPO's value model); `path` loads other weights than `model.name` (a PMP phase's
    result, the preference model as value model). With LoRA the frozen base weights are kept
    in bf16 (autocast would cast them every step anyway); full fine-tuning keeps fp32 master
    weights under bf16 autocast. The seed fixes a fresh head's and the adapters' init."""
    import torch

    from constitutional.backends.transformers_backend import load_model_and_tokenizer, pick_device
    from constitutional.models import resolve_model

    extra = {}
    if head == "score":
        from transformers import AutoModelForSequenceClassification

        extra = dict(model_class=AutoModelForSequenceClassification, num_labels=1)
    torch.manual_seed(seed)
    net, tok = load_model_and_tokenizer(
        path or resolve_model(model.name).path,
        dtype=torch.bfloat16 if (bf16 and lora) else torch.float32,
        device=pick_device(model.device), trust_remote_code=model.trust_remote_code,
        revision=model.revision, name=path or model.name, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if head == "score":
        net.config.pad_token_id = tok.pad_token_id
    net.train()
    if lora:
        torch.manual_seed(seed)
        net = lora.wrap(net, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    return net, tok
