"""Stage `rl`: RL-CAI with PPO against the preference model, as the paper does it.

Policy: the SL-CAI model (LoRA by default; the reference policy is then the same weights with
the adapters switched off, so no second copy). Reward: the preference model's score of
(prompt, answer) on the last token, minus kl_coef x the per-token KL to the reference (fixed
or adaptive coefficient). Value model: initialized from the preference model (its backbone
and score head, read at every token). Advantages by GAE, optionally whitened; the clipped
surrogate and a clipped value loss, all pure functions in `losses.py`. Rollouts are generated
through our batched engine on the policy's own weights.

In a run folder (train/ppo_run.py) the stage keeps log.jsonl (reward, KL, entropy, value loss,
clip fraction, KL coefficient per step), eval.jsonl (the preference model's mean reward and the
KL on held-out prompts that training never sees, before training, every `eval_every` steps and
at the end), checkpoint.pt (resume: a killed run continues from the last checkpoint and ends
with the same numbers) and model/ (the merged policy, an ordinary Hugging Face folder).

Under `accelerate launch` (DDP), each process rolls out, scores and trains on its share of
every batch (`batch_size` and `mini_batch_size` stay global); DDP averages the gradients,
advantages are whitened with the whole batch's statistics, the logged figures are those of the
whole batch, and held-out evaluation is split over the processes and gathered. The main process
alone writes the stage folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ClassVar, Literal, Sequence

from pydantic import Field

from constitutional.config import NOT_RESULTS
from constitutional.errors import InputError
from constitutional.jsonio import seeded_fraction
from constitutional.train.common import TrainSettings, use_bf16
from constitutional.train.distributed import per_device_batch

STAGE = "rl"
RewardFn = Callable[[Sequence[Sequence[dict]], Sequence[str]], list[float]]


class PPOConfig(TrainSettings):
    """PPO from the policy (`model`: the SL-CAI model under `cai run`) against the preference
    model, with a value model initialized from it."""
    DEFAULT_LR: ClassVar[tuple[float, float]] = (1e-4, 1e-6)
    RENAMED: ClassVar[dict[str, str]] = {"policy": "model", "max_new_tokens": "max_tokens"}

    reward_model: str | None = Field(None, description="Preference model folder (default: "
                                     "RUN/pm/model). It also initializes the value model.",
                                     json_schema_extra=NOT_RESULTS)   # hashed as an input
    prompts: str = Field("bundled:redteam", description="RL prompts (the paper: the SL "
                         "prompts plus generated ones).")
    limit: int | None = Field(None, ge=1)
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Prompts held out from "
                                 "training; the reward reported is measured on them.")
    steps: int = Field(12, ge=1, description="PPO iterations (rollout batch + updates).")
    batch_size: int = Field(8, ge=1, description="Rollouts per iteration, over all "
                            "processes (each rolls out an equal share).")
    mini_batch_size: int = Field(4, ge=1, description="Rollouts per gradient step, over "
                                 "all processes.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    max_tokens: int = Field(48, ge=1, description="Cap on new tokens per rollout.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    value_lora: bool = Field(True, description="Train the value model (initialized from the "
                             "preference model) with LoRA adapters and its score head; false "
                             "trains all its weights (the paper; 3-4x slower on a CPU).")
    value_learning_rate: float | None = Field(None, gt=0, description="None: 1e-4 with "
                                              "value_lora, 1e-5 full.")
    kl_coef: float = Field(0.05, ge=0, description="Initial KL coefficient.")
    adaptive_kl: bool = Field(False, description="Move kl_coef toward kl_target.")
    kl_target: float = Field(6.0, gt=0, description="Target KL per sequence (nats).")
    kl_horizon: int = Field(10000, ge=1)
    kl_estimator: Literal["k1", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0)
    value_clip: float | None = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_advantages: bool = True
    normalize_rewards: bool = Field(False, description="Weigh the KL penalty in units of "
                                    "the running std of the PM's scores (kl_coef x std per "
                                    "nat): the same balance as dividing the scores by their "
                                    "std, but returns stay in the PM's own units, where the "
                                    "value model initialized from the PM starts.")
    max_grad_norm: float = 1.0
    eval_every: int = Field(4, ge=1)
    eval_temperature: float = Field(0.0, ge=0, description="Decoding of the held-out "
                                    "answers (0: greedy, the least noisy comparison).")
    save_every: int = Field(2, ge=1, description="Checkpoint every N iterations.")
    snapshots: bool = Field(True, description="Save the policy at every evaluation before "
                            "the last to rl/snapshots/step-N (a LoRA adapter, or the full "
                            "model without LoRA): the frontier plot's RL checkpoints.")


def split_prompts(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out) by a hash of the prompt id: fixed across runs and resumes."""
    held = [seeded_fraction(seed, r.id) < fraction for r in rows]
    return ([r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h])


@contextmanager
def engine_attention(model):
    """Generate through our KV engine, then give the training forward passes SDPA back."""
    from constitutional.backends.kv_engine import ATTN_NAME

    before = model.config._attn_implementation
    model.config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        model.config._attn_implementation = before


def token_values(value_model):
    """The value model read at every response position, as a module of its own so that DDP
    sees its forward pass (and averages the score head's gradients with the rest)."""
    import torch

    class TokenValues(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, input_ids, attention_mask, position_ids, Q: int, T: int):
            # The sequence-classification model itself (under its LoRA wrapper, if any): its
            # backbone's hidden states go through the score head at every position.
            vm = self.value.get_base_model() if hasattr(self.value, "get_base_model") \
                else self.value
            h = vm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state   # [B, Q+T, H]
            return vm.score(h[:, Q - 1:Q - 1 + T]).squeeze(-1)               # [B, T]

    return TokenValues(value_model)


class PPOTrainer:
    """One policy, its reference, a value model and a reward function; `step()` is one PPO
    iteration. Kept apart from the run folder so tests can drive it with a toy reward."""

    def __init__(self, cfg: PPOConfig, policy, tokenizer, value_model, reward_fn: RewardFn,
                 logging_dir: Path | None = None):
        import torch

        from constitutional.backends.transformers_backend import TransformersBackend
        from constitutional.train.losses import AdaptiveKLController

        self.cfg, self.policy, self.tok, self.value, self.reward_fn = \
            cfg, policy, tokenizer, value_model, reward_fn
        self.bf16 = use_bf16(cfg.precision)
        with engine_attention(policy):
            self.backend = TransformersBackend(policy, tokenizer, "policy",
                                               batch_size=max(cfg.batch_size, 8))
        self.ref = None
        if not cfg.lora:
            import copy
            self.ref = copy.deepcopy(policy).eval().requires_grad_(False)
        lr = cfg.lr()
        self.opt = torch.optim.AdamW([
            {"params": [p for p in policy.parameters() if p.requires_grad], "lr": lr},
            {"params": [p for p in value_model.parameters() if p.requires_grad],
             "lr": cfg.value_learning_rate or (1e-4 if cfg.value_lora else 1e-5)}],
            weight_decay=0.0)
        self.kl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.score_stats = [0, 0.0, 0.0]          # n, mean, M2 (Welford) for normalization
        self.step_no = 0
        self._prepare_processes(logging_dir)

    def _prepare_processes(self, logging_dir: Path | None) -> None:
        """DDP-wrapped copies for the gradient steps under `accelerate launch`; on one
        process accelerate hands the models back unwrapped. The same Accelerator holds the
        trackers of `report_to` (events of tensorboard under `logging_dir`)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.acc = Accelerator(cpu=self.policy.device.type == "cpu",
                               log_with=list(self.cfg.report_to) or None,
                               project_dir=str(logging_dir) if logging_dir else None)
        if self.acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU,
                                             DistributedType.MULTI_CPU):
            raise InputError(f"PPO runs on one process or under DDP, not "
                             f"{self.acc.distributed_type.value}: launch it with "
                             "configs/accelerate/ddp.yaml", field="rl.method")
        self.mini_batch = per_device_batch(self.cfg.mini_batch_size, "mini_batch_size")
        self.value_reader = token_values(self.value)
        self.train_policy = self.acc.prepare_model(self.policy, device_placement=False)
        self.train_values = self.acc.prepare_model(self.value_reader, device_placement=False)

    def _total(self, t):
        """Sum over processes (the tensor itself on one process)."""
        return self.acc.reduce(t, "sum")

    def _means_over_processes(self, figures: dict[str, float]) -> dict[str, float]:
        """Each figure averaged over the processes, in one all-reduce."""
        import torch

        v = torch.tensor(list(figures.values()), dtype=torch.float64, device=self.acc.device)
        return dict(zip(figures, self.acc.reduce(v, "mean").tolist()))

    # -- rollouts -------------------------------------------------------------------------
    def rollout(self, convs: list[list[dict]], seed: int, temperature: float | None = None):
        from constitutional.backends.base import Sampling

        self.policy.eval()
        sampling = Sampling(n=1, temperature=self.cfg.temperature if temperature is None
                            else temperature, top_p=self.cfg.top_p,
                            max_tokens=self.cfg.max_tokens, seed=seed)
        with engine_attention(self.policy):
            outs = self.backend.generate(convs, sampling)
        texts = [o[0].text for o in outs]
        eos = self.tok.eos_token_id
        queries = [self.backend.encode(c) for c in convs]
        responses = []
        for o in outs:
            # The ids the engine sampled (no stop strings here, so "stop" means the end token).
            ids = list(o[0].extra["token_ids"])
            if o[0].finish_reason == "stop" and eos is not None:
                ids = ids + [eos]                 # the episode ended on the end token
            responses.append(ids or [eos])
        return texts, self._batch(queries, responses)

    def _batch(self, queries, responses) -> dict:
        """[left-padded query | response | right padding]: response t sits at Q + t for all."""
        import torch

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        Q, T = max(map(len, queries)), max(map(len, responses))
        ids = torch.full((len(queries), Q + T), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, (q, r) in enumerate(zip(queries, responses)):
            ids[i, Q - len(q):Q + len(r)] = torch.tensor(q + r)
            attn[i, Q - len(q):Q + len(r)] = 1
        mask = attn[:, Q:].float()                                          # [B, T]
        return {"input_ids": ids, "attention_mask": attn, "mask": mask, "Q": Q,
                "position_ids": (attn.cumsum(-1) - 1).clamp(min=0)}

    # -- model reads ----------------------------------------------------------------------
    def _autocast(self):
        import torch
        return torch.autocast("cpu" if self.policy.device.type == "cpu" else "cuda",
                              dtype=torch.bfloat16, enabled=self.bf16)

    def logprobs(self, model, b: dict, with_entropy: bool = False):
        """log p of each response token [B, T] (and the policy's entropy per token)."""
        import torch

        Q, T = b["Q"], b["mask"].shape[1]
        keep = torch.arange(Q - 1, Q - 1 + T)      # the LM head only where responses are read
        with self._autocast():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           position_ids=b["position_ids"], logits_to_keep=keep,
                           use_cache=False).logits
        # The rollouts were sampled from softmax(logits / temperature): the ratio, the KL and
        # the entropy are taken under that same distribution.
        logits = logits.float() / self.cfg.temperature                      # [B, T, V]
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, b["input_ids"][:, Q:Q + T, None]).squeeze(-1)
        if not with_entropy:
            return logp
        p = logp_all.exp()
        return logp, -torch.special.xlogy(p, p).sum(-1)       # 0 log 0 = 0 at low temperature

    def values(self, b: dict, reader=None):
        """The value model's estimate before each response token, [B, T]."""
        with self._autocast():
            v = (reader or self.value_reader)(b["input_ids"], b["attention_mask"],
                                              b["position_ids"], b["Q"], b["mask"].shape[1])
        return v.float()

    def ref_logprobs(self, b: dict):
        if self.ref is not None:
            return self.logprobs(self.ref, b)
        with self.policy.disable_adapter():
            return self.logprobs(self.policy, b)

    def _normalize(self, scores) -> None:
        """Add scores to the running statistics (Welford's running variance)."""
        n, mean, m2 = self.score_stats
        for s in scores.tolist():
            n += 1
            d = s - mean
            mean += d / n
            m2 += d * (s - mean)
        self.score_stats = [n, mean, m2]

    def _score_std(self) -> float:
        n, _, m2 = self.score_stats
        return (m2 / max(n - 1, 1)) ** 0.5 or 1.0

    # -- one PPO iteration ----------------------------------------------------------------
    def step(self, convs: list[list[dict]], seed: int) -> dict:
        import torch

        from constitutional.train import losses as L

        cfg = self.cfg
        texts, b = self.rollout(convs, seed)
        mask = b["mask"]
        with torch.no_grad():
            old_logp, entropy = self.logprobs(self.policy, b, with_entropy=True)
            ref_logp = self.ref_logprobs(b)
            old_values = self.values(b)
            raw = torch.tensor(self.reward_fn(convs, texts), dtype=torch.float32)
            kl_coef = kl_weight = self.kl.value
            if cfg.normalize_rewards:   # the running std of every process's scores
                self._normalize(self.acc.gather(raw.to(self.acc.device)).cpu())
                # Scaling the KL term up, not the scores down: dividing the scores by a std of
                # ~0.1 put returns ~10x away from the value model's PM-initialized estimates,
                # and its loss spent half the quickstart's iterations catching up.
                kl_weight = kl_coef * self._score_std()
            kl = L.kl_penalty(old_logp, ref_logp, cfg.kl_estimator) * mask
            rewards = L.token_rewards(raw, kl, mask, kl_weight)
            adv, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = L.whiten(adv, mask, total=self._total)
        self.policy.train()
        self.value.train()
        gen = torch.Generator().manual_seed(seed)
        stats = {"pg_loss": [], "value_loss": [], "clip_frac": []}
        n = len(convs)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for s in range(0, n, self.mini_batch):
                idx = torch.tensor(order[s:s + self.mini_batch])
                mb = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in b.items()}
                logp = self.logprobs(self.train_policy, mb)
                pg, frac = L.clipped_policy_loss(logp, old_logp[idx], adv[idx], mask[idx],
                                                 cfg.clip)
                vl = L.value_loss(self.values(mb, self.train_values), old_values[idx],
                                  returns[idx], mask[idx], cfg.value_clip)
                loss = pg + cfg.vf_coef * vl
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in self.opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.opt.step()
                stats["pg_loss"].append(pg.item())
                stats["value_loss"].append(vl.item())
                stats["clip_frac"].append(frac.item())
        # the whole batch's figures: every process holds an equal share of it
        figures = self._means_over_processes({
            "reward": raw.mean().item(), "kl": kl.sum(1).mean().item(),
            "entropy": L.masked_mean(entropy, mask).item(),
            "response_tokens": mask.sum(1).mean().item(),
            **{k: sum(v) / len(v) for k, v in stats.items()}})
        if cfg.adaptive_kl:
            self.kl.update(figures["kl"], n * self.acc.num_processes)
        self.step_no += 1
        return {"step": self.step_no, "kl_coef": kl_coef, **figures}

    def evaluate(self, convs: list[list[dict]], seed: int) -> dict:
        """Mean reward and KL to the reference on held-out prompts (fixed seed each time)."""
        import torch

        from constitutional.train import losses as L

        k, w = self.acc.process_index, self.acc.num_processes
        share = convs[k * len(convs) // w:(k + 1) * len(convs) // w]   # in order, by process
        rows = []
        if share:
            texts, b = self.rollout(share, seed, temperature=self.cfg.eval_temperature)
            with torch.no_grad():
                kls = (L.kl_penalty(self.logprobs(self.policy, b), self.ref_logprobs(b)) *
                       b["mask"]).sum(1).tolist()
            rows = list(zip(share, texts, self.reward_fn(share, texts), kls))
        from accelerate.utils import gather_object

        # one list per process, in rank order (on one process, the list itself)
        rows = [r for part in gather_object([rows]) for r in part]
        scores = [r[2] for r in rows]
        return {"step": self.step_no, "reward": sum(scores) / len(scores),
                "kl": sum(r[3] for r in rows) / len(rows),
                "samples": [{"prompt": c[-1]["content"], "answer": t, "reward": s}
                            for c, t, s, _ in rows[:3]]}

    # -- resume ---------------------------------------------------------------------------
    def state(self) -> dict:
        trainable = {k: v for k, v in self.policy.state_dict().items()
                     if not self.cfg.lora or "lora_" in k}
        return {"step": self.step_no, "policy": trainable, "value": self.value.state_dict(),
                "opt": self.opt.state_dict(), "kl_coef": self.kl.value,
                "score_stats": self.score_stats}

    def load_state(self, st: dict) -> None:
        self.policy.load_state_dict(st["policy"], strict=False)
        self.value.load_state_dict(st["value"])
        self.opt.load_state_dict(st["opt"])
        self.kl.value, self.score_stats, self.step_no = st["kl_coef"], st["score_stats"], \
            st["step"]
