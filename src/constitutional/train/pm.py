"""Stage `pm`: the preference model, a scalar score on top of a base LM, trained on soft labels.

The model is a sequence-classification head (one output) on the base LM. TRL's RewardTrainer
does the data handling, batching, checkpoints and logging; its loss is replaced by ours,
`losses.soft_pairwise_loss`, because TRL's reward loss takes hard labels only. The soft label p
travels in TRL's per-pair float column (`margin`).

Optional preference-model pretraining (PMP) runs first on question/answer pairs with vote
counts (train/pm_data.py) and the comparison phase starts from its weights. Held-out accuracy
(the share of held-out pairs whose preferred answer scores higher) is evaluated every epoch.
The result, RUN/pm/model, is an ordinary Hugging Face folder; `PreferenceModel` scores with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field

from constitutional.artifacts import StageResult, model_identity
from constitutional.config import ModelConfig, StrictModel
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file
from constitutional.train.pm_data import (ai_label_examples, held_out, human_examples, mix,
                                          pmp_examples)
from constitutional.train.sft import LoraSettings, use_bf16
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "pm"


class PMPConfig(StrictModel):
    data: str = Field(description="JSONL of {question, answers: [{text, votes, accepted}]}.")
    epochs: float = Field(1.0, gt=0)
    max_pairs_per_question: int | None = Field(4, ge=1, description="Cap on pairs drawn from "
                                               "one question (None: all).")


class PMTrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base LM the "
                               "score head goes on.")
    labels: str | None = Field(None, description="AI labels (default: RUN/labels/output.jsonl).")
    helpful: str | None = Field(None, description="Helpfulness comparisons (HH or HHH format, "
                                "human labels) mixed in.")
    helpful_per_label: float = Field(1.0, ge=0, description="Helpfulness pairs per AI label.")
    min_confidence: float = Field(0.0, ge=0, lt=0.5, description="Leave out AI labels with "
                                  "|p - 0.5| below this.")
    pmp: PMPConfig | None = Field(None, description="Preference-model pretraining first.")
    lora: bool = Field(False, description="LoRA adapters (and a trained head) instead of all "
                       "weights.")
    lora_settings: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float | None = Field(None, gt=0, description="None: 1e-5 full, 1e-4 LoRA.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1)
    batch_size: int = Field(8, ge=1, description="Pairs per step over all processes "
                            "(each takes an equal share).")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="Token cap per answer with its prompt; "
                            "TRL drops longer pairs (counted in the manifest).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Pairs held out for accuracy.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="As for SFT: "
                                                       "auto = bf16 autocast where supported.")
    warmup_steps: int = Field(0, ge=0)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(5, ge=1)
    seed: int = 0


def build_rows(cfg: PMTrainConfig, labels_path: str) -> list[dict]:
    ai = ai_label_examples(labels_path, cfg.min_confidence)
    helpful = human_examples(cfg.helpful) if cfg.helpful else []
    rows = mix(ai, helpful, cfg.helpful_per_label, cfg.seed)
    for r in rows:
        r["split"] = "eval" if held_out(r, cfg.eval_fraction, cfg.seed) else "train"
    if not any(r["split"] == "train" for r in rows):
        raise InputError("no training pairs left (all held out or filtered)", path=labels_path)
    return rows


def run_pm(cfg: PMTrainConfig, run_dir: str | Path,
           log: Callable[[str], None] = print) -> StageResult:
    labels = cfg.labels or str(Path(run_dir) / "labels" / "output.jsonl")
    inputs = {"labels": sha256_file(labels), "base": model_identity(cfg.model.name)}
    if cfg.helpful:
        inputs["helpful"] = sha256_file(cfg.helpful)
    if cfg.pmp:
        inputs["pmp"] = sha256_file(cfg.pmp.data)

    def train(rows, stage: Path, final: Path, lg) -> list[dict]:
        init = None
        if cfg.pmp:
            init = stage / "pmp_model"
            if not init.is_dir():
                lg(f"{STAGE}: preference-model pretraining on {cfg.pmp.data}")
                pmp_rows = pmp_examples(cfg.pmp.data, cfg.pmp.max_pairs_per_question, cfg.seed)
                phase = cfg.model_copy(update={"epochs": cfg.pmp.epochs, "max_steps": -1})
                fit(phase, pmp_rows, [], stage / "pmp_checkpoints", init, None, lg)
        return fit(cfg, [r for r in rows if r["split"] == "train"],
                   [r for r in rows if r["split"] == "eval"], stage / "checkpoints", final,
                   init, lg)

    return run_training_stage(STAGE, cfg.model_dump(mode="json"), inputs,
                              lambda: build_rows(cfg, labels), train, run_dir, log,
                              summarize=eval_summary)


def eval_summary(history: list[dict]) -> dict:
    evals = [{"epoch": h.get("epoch"), "accuracy": h["eval_accuracy"], "loss": h["eval_loss"]}
             for h in history if "eval_accuracy" in h]
    return {"eval": evals, "eval_accuracy": evals[-1]["accuracy"] if evals else None}


def fit(cfg: PMTrainConfig, train_rows: list[dict], eval_rows: list[dict], checkpoints: Path,
        final: Path, init: Path | None, log) -> list[dict]:
    trainer = make_trainer(cfg, train_rows, eval_rows, checkpoints, init)
    return train_and_save(trainer, checkpoints, final, cfg.lora, {"stage": STAGE, "kind": "pm"},
                          log)


def load_pm_base(cfg: PMTrainConfig, init: Path | None, bf16: bool):
    import torch
    from transformers import AutoModelForSequenceClassification

    from constitutional.backends.transformers_backend import load_model_and_tokenizer, pick_device
    from constitutional.models import resolve_model

    path = str(init) if init else resolve_model(cfg.model.name).path
    torch.manual_seed(cfg.seed)          # the fresh score head (and adapters): reproducible
    model, tok = load_model_and_tokenizer(
        path, dtype=torch.bfloat16 if (bf16 and cfg.lora) else torch.float32,
        device=pick_device(cfg.model.device), trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision, name=cfg.model.name,
        model_class=AutoModelForSequenceClassification, num_labels=1)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    model.train()
    if cfg.lora:
        model = cfg.lora_settings.wrap(model, "SEQ_CLS")
    return model, tok


def make_trainer(cfg: PMTrainConfig, train_rows: list[dict], eval_rows: list[dict],
                 checkpoints: Path, init: Path | None = None):
    import datasets
    import torch
    from trl import RewardConfig, RewardTrainer

    from constitutional.train.distributed import per_device_batch, trainer_device_args

    from constitutional.train.losses import soft_pairwise_loss

    class SoftLabelRewardTrainer(RewardTrainer):
        """RewardTrainer with the soft-label loss; `margin` carries p(chosen is better)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        use_cache=False)
            r_chosen, r_rejected = out.logits.squeeze(-1).float().chunk(2)   # [B], [B]
            loss = soft_pairwise_loss(r_chosen, r_rejected, inputs["margin"])
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                m = self._metrics[mode]
                m["accuracy"].append((r_chosen > r_rejected).float().mean().item())
                m["margin"].append((r_chosen - r_rejected).mean().item())
                m["mean_reward"].append(out.logits.float().mean().item())
            return (loss, out) if return_outputs else loss

    datasets.disable_progress_bars()
    bf16 = use_bf16(cfg.precision)
    model, tok = load_pm_base(cfg, init, bf16)
    keys = ("prompt", "chosen", "rejected", "margin")
    args = RewardConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        per_device_eval_batch_size=per_device_batch(cfg.batch_size),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate or (1e-4 if cfg.lora else 1e-5),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, max_length=cfg.max_length,
        bf16=bf16, **trainer_device_args(), activation_checkpointing=False,
        warmup_steps=cfg.warmup_steps, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, report_to=[],
        eval_strategy="epoch" if eval_rows else "no", center_rewards_coefficient=None)
    to_ds = (lambda rows: datasets.Dataset.from_list([{k: r[k] for k in keys} for r in rows]))
    return SoftLabelRewardTrainer(model=model, args=args, train_dataset=to_ds(train_rows),
                                  eval_dataset=to_ds(eval_rows) if eval_rows else None,
                                  processing_class=tok)


class PreferenceModel:
    """Scores (conversation, answer) with a trained PM folder; loaded once, batched."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification

        from constitutional.backends.transformers_backend import (load_model_and_tokenizer,
                                                                  pick_device)
        self.model, self.tok = load_model_and_tokenizer(
            str(path), dtype=torch.float32, device=pick_device(device),
            model_class=AutoModelForSequenceClassification, name=str(path))
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.batch_size = batch_size

    def encode(self, messages: Sequence[dict], answer: str) -> list[int]:
        """The same ids TRL's preference tokenizer gives (prompt + assistant turn, templated)."""
        chat = list(messages) + [{"role": "assistant", "content": answer}]
        return self.tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]

    def score(self, conversations: Sequence[Sequence[dict]], answers: Sequence[str]) -> list[float]:
        import torch

        ids = [self.encode(c, a) for c, a in zip(conversations, answers)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [0.0] * len(ids)
        pad = self.tok.pad_token_id
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                n = max(len(ids[i]) for i in idx)
                x = torch.full((len(idx), n), pad, dtype=torch.long)
                mask = torch.zeros_like(x)
                for row, i in enumerate(idx):       # right padding, as in training
                    x[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                dev = self.model.device
                logits = self.model(input_ids=x.to(dev), attention_mask=mask.to(dev)).logits
                for row, i in enumerate(idx):
                    out[i] = float(logits[row, 0])
        return out
