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
from typing import Callable, ClassVar, Sequence

from pydantic import Field

from constitutional.artifacts import StageDir, StageResult, model_identity
from constitutional.config import NOT_RESULTS, StrictModel, results_config
from constitutional.errors import InputError
from constitutional.datasource import digest
from constitutional.rundir import RunDir
from constitutional.train.pm_data import (ai_label_examples, held_out, human_examples, mix,
                                          pmp_examples)
from constitutional.train.common import (Schedule, TrainSettings, load_trainable, tensorboard_dir,
                                         trl_config, use_bf16)
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "pm"


class PMPConfig(StrictModel):
    data: str = Field(description="JSONL of {question, answers: [{text, votes, accepted}]}.")
    epochs: float = Field(1.0, gt=0)
    max_pairs_per_question: int | None = Field(4, ge=1, description="Cap on pairs drawn from "
                                               "one question (None: all).")


class PMTrainConfig(Schedule, TrainSettings):
    """The preference model: a score head on the base LM (`model`)."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (1e-4, 1e-5)

    labels: str | None = Field(None, description="AI labels (default: RUN/label/output.jsonl).",
                               json_schema_extra=NOT_RESULTS)     # hashed as an input
    helpful: str | None = Field(None, description="Helpfulness comparisons (HH or HHH format, "
                                "human labels) mixed in.", json_schema_extra=NOT_RESULTS)
    helpful_per_label: float = Field(1.0, ge=0, description="Helpfulness pairs per AI label.")
    min_confidence: float = Field(0.0, ge=0, lt=0.5, description="Leave out AI labels with "
                                  "|p - 0.5| below this.")
    pmp: PMPConfig | None = Field(None, description="Preference-model pretraining first.")
    lora: bool = Field(False, description="LoRA adapters (and a trained head) instead of all "
                       "weights.")
    max_length: int = Field(512, ge=16, description="Token cap per answer with its prompt; "
                            "TRL drops longer pairs (counted in the manifest).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Pairs held out for accuracy.")


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
    run = RunDir.of(run_dir)
    labels = cfg.labels or str(run.labels.output)
    inputs = {"labels": digest(labels), "base": model_identity(cfg.model.name)}
    if cfg.helpful:
        inputs["helpful"] = digest(cfg.helpful)
    if cfg.pmp:
        inputs["pmp"] = digest(cfg.pmp.data)

    def train(rows, stage: StageDir, lg) -> list[dict]:
        init = None
        if cfg.pmp:       # a first phase in the stage's own folder
            init = stage.path / "pmp_model"
            if not init.is_dir():
                lg(f"{STAGE}: preference-model pretraining on {cfg.pmp.data}")
                pmp_rows = pmp_examples(cfg.pmp.data, cfg.pmp.max_pairs_per_question, cfg.seed)
                phase = cfg.model_copy(update={"epochs": cfg.pmp.epochs, "max_steps": -1})
                fit(phase, pmp_rows, [], stage.path / "pmp_checkpoints", init, None, lg)
        return fit(cfg, [r for r in rows if r["split"] == "train"],
                   [r for r in rows if r["split"] == "eval"], stage.checkpoints, stage.model,
                   init, lg)

    return run_training_stage(run.pm, results_config(cfg), inputs,
                              lambda: build_rows(cfg, labels), train, log,
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
    model, tok = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.lora else None,
                                bf16=bf16, seed=cfg.seed, head="score",
                                path=str(init) if init else None)
    keys = ("prompt", "chosen", "rejected", "margin")
    args = trl_config(
        RewardConfig, cfg, checkpoints.parent, output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        per_device_eval_batch_size=per_device_batch(cfg.batch_size),
        learning_rate=cfg.lr(), max_length=cfg.max_length, bf16=bf16, **trainer_device_args(),
        activation_checkpointing=False, eval_strategy="epoch" if eval_rows else "no",
        center_rewards_coefficient=None)
    to_ds = (lambda rows: datasets.Dataset.from_list([{k: r[k] for k in keys} for r in rows]))
    with tensorboard_dir(checkpoints.parent):
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
