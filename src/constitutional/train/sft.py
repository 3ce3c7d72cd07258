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
from typing import Callable, ClassVar

from pydantic import Field

from constitutional.artifacts import StageResult, model_identity
from constitutional.config import NOT_RESULTS, results_config
from constitutional.errors import InputError
from constitutional.datasource import digest
from constitutional.rundir import RunDir
from constitutional.train.common import (Schedule, TrainSettings, load_trainable, tensorboard_dir,
                                         trl_config, use_bf16)
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "sl_model"


class SFTTrainConfig(Schedule, TrainSettings):
    """SL-CAI fine-tuning (the paper fine-tunes the pretrained model)."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (2e-4, 1e-5)

    revisions: str | None = Field(None, description="critique stage output "
                                  "(critique/output.jsonl); `cai sl-cai` fills it in.",
                                  json_schema_extra=NOT_RESULTS)  # hashed as an input
    helpful: str | None = Field(None, description="generate output on helpful prompts.",
                                json_schema_extra=NOT_RESULTS)
    helpful_per_revision: float = Field(1.0, ge=0, description="Helpful examples mixed in "
                                        "per revision example.")
    include_flagged: bool = Field(False, description="Also train on flagged revisions.")
    max_length: int = Field(512, ge=16, description="Tokens per example (longer ones are "
                            "truncated).")
    activation_checkpointing: bool = Field(False, description="Trade ~30% speed for memory.")


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
    inputs = {"revisions": digest(cfg.revisions), "base": model_identity(cfg.model.name)}
    if cfg.helpful:
        inputs["helpful"] = digest(cfg.helpful)
    return run_training_stage(
        RunDir.of(run_dir).sl, results_config(cfg), inputs, lambda: build_dataset(cfg),
        lambda rows, stage, lg: train(cfg, rows, stage.checkpoints, stage.model, lg), log)


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
    model, tok = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.lora else None,
                                bf16=bf16, seed=cfg.seed)
    args = trl_config(
        SFTConfig, cfg, checkpoints.parent, output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        learning_rate=cfg.lr(), max_length=cfg.max_length, bf16=bf16, **trainer_device_args(),
        activation_checkpointing=cfg.activation_checkpointing, completion_only_loss=True)
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                       for r in rows])
    trainer_cls = _completion_loss_trainer() if model.device.type == "cpu" else SFTTrainer
    with tensorboard_dir(checkpoints.parent):
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
