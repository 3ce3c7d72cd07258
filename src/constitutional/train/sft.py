"""Stage `sl_model`: supervised fine-tuning (SL-CAI) with TRL's SFTTrainer, full or LoRA.

What makes it fast on a CPU with bf16 matrix units (see bench/train.py): bf16 autocast,
activation checkpointing off (TRL turns it on by default; it costs 25-30% per step), for LoRA
the frozen base weights stored in bf16 so autocast does not re-cast them every step, and on
CPU a loss that projects only the completion positions through the LM head (TRL's fused head
falls back to torch ops over every position there, with fp32 gradient matmuls: 7 of the 11 s
of a LoRA step in our profile).

The result is an ordinary Hugging Face folder (safetensors, tokenizer, chat template) at
RUN/sl_model/model: LoRA adapters are merged in, so every command takes it as `--model`.
Resumable: Trainer checkpoints land in RUN/sl_model/checkpoints and a restarted run with the
same config and data continues from the latest; the final folder appears by atomic rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from constitutional.artifacts import StageResult, model_identity
from constitutional.config import ModelConfig, StrictModel
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "sl_model"


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


class SFTTrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to "
                               "fine-tune (the paper fine-tunes the pretrained model).")
    revisions: str | None = Field(None, description="critique stage output "
                                  "(critique/output.jsonl); `cai sl-cai` fills it in.")
    helpful: str | None = Field(None, description="generate output on helpful prompts.")
    helpful_per_revision: float = Field(1.0, ge=0, description="Helpful examples mixed in "
                                        "per revision example.")
    include_flagged: bool = Field(False, description="Also train on flagged revisions.")
    lora: bool = Field(True, description="Train LoRA adapters (merged at the end) instead of "
                       "all weights.")
    lora_settings: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float | None = Field(None, gt=0, description="None: 2e-4 with LoRA, "
                                        "1e-5 for full fine-tuning.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per step over all "
                            "processes (each takes an equal share).")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated per optimizer update.")
    max_length: int = Field(512, ge=16, description="Tokens per example (longer ones are "
                            "truncated).")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the CPU has bf16 units or on GPU.")
    activation_checkpointing: bool = Field(False, description="Trade ~30% speed for memory.")
    warmup_steps: int = Field(0, ge=0)
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume point).")
    logging_steps: int = Field(5, ge=1)
    seed: int = 0


def use_bf16(precision: str) -> bool:
    import torch

    from constitutional.backends.transformers_backend import cpu_has_bf16

    if precision != "auto":
        return precision == "bf16"
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported() or \
        (not torch.cuda.is_available() and cpu_has_bf16())


def build_dataset(cfg: SFTTrainConfig) -> list[dict]:
    from constitutional.train.sft_data import helpful_examples, mix, revision_examples

    revisions = revision_examples(cfg.revisions, cfg.include_flagged)
    if not revisions:
        raise InputError("no usable revisions (all flagged? see include_flagged)",
                         path=cfg.revisions)
    helpful = helpful_examples(cfg.helpful) if cfg.helpful else []
    return mix(revisions, helpful, cfg.helpful_per_revision, cfg.seed)


def run_sft(cfg: SFTTrainConfig, run_dir: str | Path,
            log: Callable[[str], None] = print) -> StageResult:
    if not cfg.revisions:
        raise InputError("no revisions to train on: give `revisions` (a critique output)",
                         field="revisions")
    inputs = {"revisions": sha256_file(cfg.revisions), "base": model_identity(cfg.model.name)}
    if cfg.helpful:
        inputs["helpful"] = sha256_file(cfg.helpful)
    return run_training_stage(
        STAGE, cfg.model_dump(mode="json"), inputs, lambda: build_dataset(cfg),
        lambda rows, stage, final, lg: train(cfg, rows, stage / "checkpoints", final, lg),
        run_dir, log)


def train(cfg: SFTTrainConfig, rows: list[dict], checkpoints: Path, final: Path,
          log: Callable[[str], None] = print) -> list[dict]:
    """Fine-tune on prompt-completion rows; write the merged model to `final`."""
    return train_and_save(make_trainer(cfg, rows, checkpoints), checkpoints, final, cfg.lora,
                          {"stage": STAGE}, log)


def make_trainer(cfg: SFTTrainConfig, rows: list[dict], checkpoints: Path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    from constitutional.train.distributed import per_device_batch, trainer_device_args

    datasets.disable_progress_bars()
    bf16 = use_bf16(cfg.precision)
    model, tok = load_trainable(cfg, bf16)
    args = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate or (2e-4 if cfg.lora else 1e-5),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, max_length=cfg.max_length,
        bf16=bf16, **trainer_device_args(),
        activation_checkpointing=cfg.activation_checkpointing, warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, report_to=[], completion_only_loss=True)
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                       for r in rows])
    trainer_cls = _completion_loss_trainer() if model.device.type == "cpu" else SFTTrainer
    return trainer_cls(model=model, args=args, train_dataset=data, processing_class=tok)


def _completion_loss_trainer():
    import torch
    from trl import SFTTrainer

    from constitutional.train.losses import completion_nll

    class CompletionLossSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss runs the LM head on the completion positions only.

        The positions go to the model's own forward (`logits_to_keep`, a boolean mask), so the
        call still passes through DDP and PEFT wrappers. Kept for CPU: on GPUs TRL's fused
        Triton head is faster and never holds the [N, V] logits.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]                                   # [B, T], -100 = no loss
            scored = labels[:, 1:] != -100                              # [B, T-1] predicts t+1
            keep = torch.nn.functional.pad(scored, (0, 1), value=False)  # [B, T]
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        logits_to_keep=keep, use_cache=False)          # logits [N, V]
            targets = labels[:, 1:][scored]                             # [N]
            loss_sum, n = completion_nll(out.logits, targets)
            loss = loss_sum / (n.clamp(min=1) if num_items_in_batch is None
                               else num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes   # DDP averages; see TRL's loss
            with torch.no_grad():
                correct = (out.logits.argmax(-1) == targets).sum()
            mode = "train" if model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append((correct / n.clamp(min=1)).item())
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, out) if return_outputs else loss

    return CompletionLossSFTTrainer


def load_trainable(cfg: SFTTrainConfig, bf16: bool):
    import torch

    from constitutional.backends.transformers_backend import load_model_and_tokenizer, pick_device
    from constitutional.models import resolve_model

    resolved = resolve_model(cfg.model.name)
    # LoRA: frozen base weights in bf16 (autocast would cast them every step anyway);
    # full fine-tuning keeps fp32 master weights under bf16 autocast.
    dtype = torch.bfloat16 if (bf16 and cfg.lora) else torch.float32
    model, tok = load_model_and_tokenizer(
        resolved.path, dtype=dtype, device=pick_device(cfg.model.device),
        trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
        name=cfg.model.name)
    model.train()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.lora:
        torch.manual_seed(cfg.seed)     # adapter init: the same run gives the same model
        model = cfg.lora_settings.wrap(model, "CAUSAL_LM")
    return model, tok


