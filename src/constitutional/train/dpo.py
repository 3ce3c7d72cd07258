"""Stage `rl` with method dpo: DPO on the AI-labelled pairs (soft labels), on pairs by
construction (the critic's revision chosen over the policy's original, hard labels), or both.

TRL's DPOTrainer does the data handling, the reference model (the adapters switched off under
LoRA), checkpoints and logging. Two ways to use a soft label p (probability that `chosen` is
better; pairs are oriented so p >= 0.5), set by `soft_labels`:

- `smooth` (default): per-pair label smoothing with epsilon = 1 - p, i.e. the soft-label loss
  -[p log sigmoid(beta D) + (1 - p) log sigmoid(-beta D)], D = (log pi_c - log ref_c) -
  (log pi_r - log ref_r) (`losses.soft_dpo_loss`). TRL's own `label_smoothing` is one number
  for all pairs, so the loss is ours.
- `drop`: pairs with |p - 0.5| < `min_confidence` are left out and the rest trained as hard
  labels (p = 1).
`min_confidence` also applies under `smooth`. Pairs by construction (`pairs: revisions`) are
the open recipes' DPO data: they need no labels, and teach the policy away from its own
unrevised answers rather than between two of its samples. On CPU the log-probabilities come
from the LM head run on completion positions only, as in SFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from constitutional.artifacts import StageResult, model_identity
from constitutional.config import ModelConfig, StrictModel
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file
from constitutional.train.pm_data import ai_label_examples, revision_pair_examples
from constitutional.train.sft import LoraSettings, use_bf16
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "rl"


class DPOTrainConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy (the "
                               "SL-CAI model; `cai run` fills it in).")
    pairs: Literal["labels", "revisions", "both"] = Field(
        "labels", description="labels: the AI-labelled pairs (RLAIF); revisions: pairs by "
        "construction from the critique stage (revision chosen, original rejected); both.")
    labels: str | None = Field(None, description="AI labels (default: RUN/labels/output.jsonl).")
    revisions: str | None = Field(None, description="Critique rows for `pairs: revisions` "
                                  "(default: RUN/critique/output.jsonl).")
    soft_labels: Literal["smooth", "drop"] = "smooth"
    min_confidence: float = Field(0.0, ge=0, lt=0.5, description="Leave out pairs with "
                                  "|p - 0.5| below this.")
    beta: float = Field(0.1, gt=0)
    lora: bool = True
    lora_settings: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float | None = Field(None, gt=0, description="None: 5e-5 LoRA, 5e-7 full.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(4, ge=1, description="Pairs per step over all processes (each "
                            "takes an equal share).")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(5, ge=1)
    seed: int = 0


def pair_sources(cfg: DPOTrainConfig, run_dir: str | Path) -> dict[str, str]:
    """{kind: path} of the pair files this config trains on."""
    run_dir = Path(run_dir)
    out = {}
    if cfg.pairs in ("labels", "both"):
        out["labels"] = cfg.labels or str(run_dir / "labels" / "output.jsonl")
    if cfg.pairs in ("revisions", "both"):
        out["revisions"] = cfg.revisions or str(run_dir / "critique" / "output.jsonl")
    return out


def build_rows(cfg: DPOTrainConfig, sources: dict[str, str]) -> list[dict]:
    rows = ai_label_examples(sources["labels"], cfg.min_confidence) if "labels" in sources \
        else []
    if "revisions" in sources:
        rows += revision_pair_examples(sources["revisions"])
    out = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
            "soft_label": 1.0 if cfg.soft_labels == "drop" else r["margin"],
            "source_id": r["source_id"]} for r in rows]
    if not out:
        raise InputError("no pairs left to train on (all labels too close to 0.5, or no "
                         "kept revisions?)", path=", ".join(sources.values()))
    return out


def run_dpo(cfg: DPOTrainConfig, run_dir: str | Path,
            log: Callable[[str], None] = print) -> StageResult:
    sources = pair_sources(cfg, run_dir)
    for kind, path in sources.items():
        if not Path(path).is_file():
            raise InputError(f"no {kind} to train DPO on (run the "
                             f"{'label' if kind == 'labels' else 'sl-cai'} stage first)",
                             path=path, field="rl.dpo.pairs")
    inputs = {**{k: sha256_file(p) for k, p in sources.items()},
              "policy": model_identity(cfg.model.name)}

    def train(rows, stage: Path, final: Path, lg) -> list[dict]:
        trainer = make_trainer(cfg, rows, stage / "checkpoints")
        return train_and_save(trainer, stage / "checkpoints", final, cfg.lora,
                              {"stage": STAGE, "kind": "dpo"}, lg)

    return run_training_stage(STAGE, {"method": "dpo", **cfg.model_dump(mode="json")}, inputs,
                              lambda: build_rows(cfg, sources), train, run_dir, log)


def sequence_logps(model, inputs):
    """Summed log-probability of each row's completion tokens, [2B] (chosen rows, rejected
    rows), with the LM head run on completion positions only."""
    import torch

    ids, mask = inputs["input_ids"], inputs["completion_mask"]
    scored = mask[:, 1:].bool()                                         # [2B, T-1]
    keep = torch.nn.functional.pad(scored, (0, 1), value=False)         # [2B, T]
    logits = model(input_ids=ids, attention_mask=inputs["attention_mask"],
                   logits_to_keep=keep, use_cache=False).logits         # [N, V]
    targets = ids[:, 1:][scored]                                        # [N]
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    rows = scored.nonzero()[:, 0]                                       # [N] row of each token
    return torch.zeros(ids.shape[0], device=ids.device).index_add(0, rows, token_logps)


def make_trainer(cfg: DPOTrainConfig, rows: list[dict], checkpoints: Path):
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    from constitutional.train.distributed import per_device_batch, trainer_device_args
    from constitutional.train.losses import soft_dpo_loss
    from constitutional.train.sft import load_trainable

    class SoftLabelDPOTrainer(DPOTrainer):
        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "soft_label" not in self._signature_columns:
                self._signature_columns.append("soft_label")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chosen, rejected = sequence_logps(model, inputs).chunk(2)
            with torch.no_grad():
                if self.ref_model is None:          # LoRA: the reference is the base model
                    with self.accelerator.unwrap_model(model).disable_adapter():
                        ref = sequence_logps(model, inputs)
                else:
                    ref = sequence_logps(self.ref_model, inputs)
            ref_chosen, ref_rejected = ref.chunk(2)
            loss = soft_dpo_loss(chosen, rejected, ref_chosen, ref_rejected,
                                 inputs["soft_label"], self.beta)
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                margin = self.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
                self._metrics[mode]["rewards/margins"].append(margin.mean().item())
                self._metrics[mode]["rewards/accuracies"].append((margin > 0).float().mean().item())
            return (loss, None) if return_outputs else loss

    datasets.disable_progress_bars()
    bf16 = use_bf16(cfg.precision)
    model, tok = load_trainable(cfg, bf16)
    ref = None
    if not cfg.lora:           # full fine-tuning needs a frozen copy; under LoRA it is free
        import copy
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    args = DPOConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate or (5e-5 if cfg.lora else 5e-7),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, max_length=cfg.max_length,
        beta=cfg.beta, bf16=bf16, **trainer_device_args(),
        activation_checkpointing=False, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, report_to=[])
    data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected",
                                                           "soft_label")} for r in rows])
    trainer = SoftLabelDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                                  processing_class=tok)
    collate = trainer.data_collator

    def with_soft_labels(examples):
        out = collate(examples)
        out["soft_label"] = torch.tensor([e["soft_label"] for e in examples],
                                         dtype=torch.float32)
        return out
    trainer.data_collator = with_soft_labels
    return trainer
