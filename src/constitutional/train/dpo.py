"""Stage `rl` with method dpo: DPO on the AI-labelled pairs (soft labels), on pairs by
construction (the critic's revision chosen over the policy's original, hard labels), or both;
optionally with over-refusal pairs (on benign prompts the policy's answer over a refusal).

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
from typing import Callable, ClassVar, Literal

from pydantic import Field

from constitutional.artifacts import StageDir, StageResult, model_identity
from constitutional.config import NOT_RESULTS, results_config
from constitutional.errors import InputError
from constitutional.datasource import digest, source
from constitutional.rundir import RunDir
from constitutional.train.pm_data import (ai_label_examples, over_refusal_examples,
                                          revision_pair_examples)
from constitutional.train.common import (Schedule, TrainSettings, load_trainable, tensorboard_dir,
                                         trl_config, use_bf16)
from constitutional.train.stage import run_training_stage, train_and_save

STAGE = "rl"


class DPOTrainConfig(Schedule, TrainSettings):
    """DPO from the policy (`model`, the SL-CAI model under `cai run`; the reference is the
    same model, adapters off)."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (5e-5, 5e-7)

    pairs: Literal["labels", "revisions", "both"] = Field(
        "labels", description="labels: the AI-labelled pairs (RLAIF); revisions: pairs by "
        "construction from the critique stage (revision chosen, original rejected); both.")
    labels: str | None = Field(None, description="AI labels (default: RUN/label/output.jsonl).",
                               json_schema_extra=NOT_RESULTS)     # hashed as an input
    revisions: str | None = Field(None, description="Critique rows for `pairs: revisions` "
                                  "(default: RUN/critique/output.jsonl).",
                                  json_schema_extra=NOT_RESULTS)
    refusal_pairs: bool = Field(False, description="Also train on over-refusal pairs: on each "
                                "helpful prompt the policy's answer (RUN/helpful/) is chosen "
                                "over the critic's deliberate refusal of it (RUN/refusals/, "
                                "sl-cai's helpful.refusals), so DPO on declines to harmful "
                                "requests does not teach declining benign ones.")
    helpful: str | None = Field(None, description="Helpful answers for refusal_pairs "
                                "(default: RUN/helpful/output.jsonl).",
                                json_schema_extra=NOT_RESULTS)
    refusals: str | None = Field(None, description="Over-refusals for refusal_pairs "
                                 "(default: RUN/refusals/output.jsonl).",
                                 json_schema_extra=NOT_RESULTS)
    soft_labels: Literal["smooth", "drop"] = "smooth"
    min_confidence: float = Field(0.0, ge=0, lt=0.5, description="Leave out pairs with "
                                  "|p - 0.5| below this.")
    beta: float = Field(0.1, gt=0)
    batch_size: int = Field(4, ge=1, description="Pairs per step over all processes (each "
                            "takes an equal share).")
    max_length: int = Field(512, ge=16)


def pair_sources(cfg: DPOTrainConfig, run_dir: str | Path) -> dict[str, str]:
    """{kind: path} of the pair files this config trains on."""
    run = RunDir.of(run_dir)
    out = {}
    if cfg.pairs in ("labels", "both"):
        out["labels"] = cfg.labels or str(run.labels.output)
    if cfg.pairs in ("revisions", "both"):
        out["revisions"] = cfg.revisions or str(run.critique.output)
    if cfg.refusal_pairs:
        out["helpful"] = cfg.helpful or str(run.helpful.output)
        out["refusals"] = cfg.refusals or str(run.refusals.output)
    return out


def build_rows(cfg: DPOTrainConfig, sources: dict[str, str]) -> list[dict]:
    rows = ai_label_examples(sources["labels"], cfg.min_confidence) if "labels" in sources \
        else []
    if "revisions" in sources:
        rows += revision_pair_examples(sources["revisions"])
    if "refusals" in sources:
        rows += over_refusal_examples(sources["helpful"], sources["refusals"])
    out = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
            "soft_label": 1.0 if cfg.soft_labels == "drop" else r["margin"],
            "source": r["source"], "source_id": r["source_id"]} for r in rows]
    if not out:
        raise InputError("no pairs left to train on (all labels too close to 0.5, or no "
                         "kept revisions?)", path=", ".join(sources.values()))
    return out


def run_dpo(cfg: DPOTrainConfig, run_dir: str | Path,
            log: Callable[[str], None] = print) -> StageResult:
    sources = pair_sources(cfg, run_dir)
    for kind, path in sources.items():
        try:
            source(path)
        except InputError:
            raise InputError(f"no {kind} to train DPO on (run the "
                             f"{'label' if kind == 'labels' else 'sl-cai'} stage first"
                             f"{' with helpful.refusals' if kind == 'refusals' else ''})",
                             path=path, field="rl.dpo.refusal_pairs" if kind in
                             ("helpful", "refusals") else "rl.dpo.pairs") from None
    inputs = {**{k: digest(p) for k, p in sources.items()},
              "policy": model_identity(cfg.model.name)}

    def train(rows, stage: StageDir, lg) -> list[dict]:
        trainer = make_trainer(cfg, rows, stage.checkpoints)
        return train_and_save(trainer, stage.checkpoints, stage.model, cfg.lora,
                              {"stage": STAGE, "kind": "dpo"}, lg)

    return run_training_stage(RunDir.of(run_dir).rl,
                              {"method": "dpo", **results_config(cfg)}, inputs,
                              lambda: _counted(build_rows(cfg, sources), log), train, log)


def _counted(rows: list[dict], log: Callable[[str], None]) -> list[dict]:
    """The pairs, after saying how many of each kind there are."""
    from collections import Counter

    kinds = Counter(r["source"] for r in rows)
    log("DPO pairs: " + ", ".join(f"{n} {KIND_NAMES.get(k, k)}" for k, n in kinds.items()))
    return rows


KIND_NAMES = {"ai": "AI-labelled", "revision": "by construction (revision over original)",
              "over_refusal": "over-refusal (benign answer over a refusal)"}


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
    from trl import DPOConfig

    from constitutional.train.distributed import per_device_batch, trainer_device_args

    SoftLabelDPOTrainer = _soft_label_dpo_trainer()
    datasets.disable_progress_bars()
    bf16 = use_bf16(cfg.precision)
    model, tok = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.lora else None,
                                bf16=bf16, seed=cfg.seed)
    ref = None
    if not cfg.lora:           # full fine-tuning needs a frozen copy; under LoRA it is free
        import copy
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    args = trl_config(
        DPOConfig, cfg, checkpoints.parent, output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_batch(cfg.batch_size),
        learning_rate=cfg.lr(), max_length=cfg.max_length, beta=cfg.beta, bf16=bf16,
        **trainer_device_args(), activation_checkpointing=False)
    data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected",
                                                           "soft_label")} for r in rows])
    with tensorboard_dir(checkpoints.parent):
        trainer = SoftLabelDPOTrainer(model=model, ref_model=ref, args=args,
                                      train_dataset=data, processing_class=tok)
    collate = trainer.data_collator

    def with_soft_labels(examples):
        out = collate(examples)
        out["soft_label"] = torch.tensor([e["soft_label"] for e in examples],
                                         dtype=torch.float32)
        return out
    trainer.data_collator = with_soft_labels
    return trainer


def _soft_label_dpo_trainer():
    """TRL's DPOTrainer with the soft-label DPO loss (`soft_label` travels with each row)."""
    import torch
    from trl import DPOTrainer

    from constitutional.train.losses import soft_dpo_loss

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

    return SoftLabelDPOTrainer
