"""Batched decoding and choice scoring on a Hugging Face causal LM, with a KV cache we own.

The model's own modules do the math; we own three things that decide speed on a CPU:
- the KV cache: per-layer buffers grown in blocks, written in place and read as views of
  their filled part (transformers' DynamicCache re-concatenates the whole cache every token,
  two thirds of a decode step at batch 64);
- attention: SDPA over that buffer with grouped-query heads read in place (no KV repeat), and
  in fp32 decoding two small batched matmuls, which are faster there;
- the batch: explicit position ids and 4D masks (left padding, a shared prefix broadcast to
  many rows), finished rows compacted away, and one random stream per row, so a row's sample
  does not depend on which rows it was batched with;
- the size of a pass: on a CPU a many-row prefill or scoring pass runs a few rows at a time,
  so that no activation outgrows the allocator's heap (`rows_per_pass`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .cpu_runtime import packed_linears

ATTN_NAME = "cai_kv"
# Cache capacity is a multiple of this many tokens.
_BLOCK = 16
# A prefix shared by all prompts of a generate batch is prefilled once when at least this long.
MIN_SHARED_DECODE_PREFIX = 32
# Pure top-p sampling looks for each row's nucleus among its top-k candidates at these widths.
_NUCLEUS_WIDTHS = (64, 512, 4096)
# The largest activation of one CPU forward pass stays under this. glibc serves blocks up to
# its 32 MiB mmap threshold (the most cpu_runtime.keep_freed_memory can ask for) from a heap
# it keeps; a bigger block is a fresh mapping, page-faulted in on every allocation. 64
# critique requests on the 1.5B feedback model made MLP activations of ~180 MB in every
# layer: passes of 8 rows prefilled them 1.5x as fast, with under 1% of the page faults
# (bench/prefill.py).
PASS_BYTES = 24 * 1024 ** 2


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """query [B, H, q, d], key/value [B, Hkv, T, d] -> ([B, q, H, d], None).

    attention_mask: boolean [B, 1, q, T] (True = may attend) for prefill and scoring, additive
    [B, 1, 1, T] (0 or -inf) for decoding, or None (no padding: plain causal attention).
    """
    _refuse_unimplemented(kw, key.shape[2])
    B, H, q, d = query.shape
    G = H // key.shape[1]
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(d)
    if q == 1 and query.dtype == torch.float32 and query.device.type == "cpu":
        return _decode_attention_fp32(query, key, value, attention_mask, scaling), None
    T = key.shape[2]
    if attention_mask is None and T != q:
        # No mask but a cache in front: causal aligned to the end (SDPA's is_causal is not).
        attention_mask = torch.ones(q, T, dtype=torch.bool, device=query.device).tril(T - q)
    # SDPA's fused kernel reads the cache views in place, without repeating K/V for grouped
    # heads; in bf16 decoding two batched matmuls copy the views first (bench/engine_parts.py:
    # 2.36 vs 1.04 ms a layer at 128 rows, 18.9 vs 14.7 s a batch).
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                         is_causal=attention_mask is None, scale=scaling,
                                         enable_gqa=G > 1)
    return out.transpose(1, 2).contiguous(), None


class EngineUnsupported(RuntimeError):
    """The model asked the engine's attention for something it does not compute."""


def _refuse_unimplemented(kw: dict, T: int) -> None:
    """The last guard against a silently wrong answer: soft-capping, attention sinks and a
    window narrower than the sequence are refused here (the backend routes such models and
    calls to transformers' own code, plain_engine.py, before they get this far)."""
    if kw.get("softcap"):
        raise EngineUnsupported("attention logit soft-capping")
    if kw.get("s_aux") is not None:
        raise EngineUnsupported("attention sinks")
    window = kw.get("sliding_window")
    if window and T > window:
        raise EngineUnsupported(f"a sliding window of {window} over {T} tokens")


def _decode_attention_fp32(query, key, value, attention_mask, scaling):
    """One new token per row in fp32 on CPU, where two batched matmuls beat SDPA's kernel
    (bench/engine_parts.py: 1.36 vs 1.68 ms a layer at 128 rows x 192 cached tokens). Head h
    reads kv head h // G, so [B, H, 1, d] -> [B*Hkv, G, d] needs no copy of K or V."""
    B, H, _, d = query.shape
    Hkv, T = key.shape[1], key.shape[2]
    G = H // Hkv
    qg = query.reshape(B * Hkv, G, d)
    scores = torch.bmm(qg, key.reshape(B * Hkv, T, d).transpose(1, 2)) * scaling
    scores = scores.view(B, Hkv, G, T)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)                        # [B, Hkv, G, T]
    out = torch.bmm(probs.view(B * Hkv, G, T), value.reshape(B * Hkv, T, d))
    return out.view(B, 1, H, d)


AttentionInterface.register(ATTN_NAME, _attention)


def _inference(fn):
    """Run an engine entry point under inference mode with the model's linears on packed
    weights (cpu_runtime.py)."""
    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        with torch.inference_mode(), packed_linears(model):
            return fn(model, *args, **kwargs)
    return run


def use_engine_attention(model) -> None:
    """Route the model's attention through `_attention` (only this engine calls it)."""
    model.config._attn_implementation = ATTN_NAME


class KVCache:
    """Per-layer buffers [B, Hkv, capacity, d]; the first `length` tokens are filled
    (left-aligned) and attention reads only those, as a view: slots past `length` are never
    read, so they need no zeroing and their memory is not touched until written.

    Duck-types the one method transformers' attention layers call on a cache: `update`.
    """

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0
        self.capacity = 0
        self.valid: torch.Tensor | None = None   # [B, length] bool: which cached tokens are real

    def reserve(self, needed: int) -> None:
        """Make room for `needed` tokens; the filled part is copied into bigger buffers."""
        if needed <= self.capacity:
            return
        # Grow by a quarter (at least one block): few copies of the filled part.
        step = max(_BLOCK, self.capacity // 4)
        new_cap = -(-max(needed, self.capacity + step) // _BLOCK) * _BLOCK
        self.k = [None if k is None else self._moved(k, k.shape[0], new_cap) for k in self.k]
        self.v = [None if v is None else self._moved(v, v.shape[0], new_cap) for v in self.v]
        self.capacity = new_cap

    def _moved(self, t: torch.Tensor, rows: int, capacity: int,
               index: torch.Tensor | None = None) -> torch.Tensor:
        """A new [rows, Hkv, capacity, d] buffer holding t's filled part (its `index` rows)."""
        filled = t[:, :, :self.length]
        out = t.new_empty(rows, t.shape[1], capacity, t.shape[3])
        out[:, :, :self.length] = filled if index is None else filled.index_select(0, index)
        return out

    def update(self, key, value, layer_idx, *args, **kwargs):
        if self.k[layer_idx] is None:
            B, Hkv, _, d = key.shape
            self.k[layer_idx] = key.new_empty(B, Hkv, self.capacity, d)
            self.v[layer_idx] = value.new_empty(B, Hkv, self.capacity, d)
        s, e = self.length, self.length + key.shape[2]
        self.k[layer_idx][:, :, s:e] = key
        self.v[layer_idx][:, :, s:e] = value
        return self.k[layer_idx][:, :, :e], self.v[layer_idx][:, :, :e]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (drop finished sequences)."""
        n, cap = len(rows), self.capacity
        self.k = [None if k is None else self._moved(k, n, cap, rows) for k in self.k]
        self.v = [None if v is None else self._moved(v, n, cap, rows) for v in self.v]

    def broadcast(self, n: int, capacity: int) -> "KVCache":
        """A new cache of n rows, each starting with this (one-row) cache's tokens."""
        out = KVCache(len(self.k))
        out.length, out.capacity = self.length, -(-capacity // _BLOCK) * _BLOCK
        index = torch.zeros(n, dtype=torch.long, device=self.k[0].device)
        out.k = [self._moved(k, n, out.capacity, index) for k in self.k]
        out.v = [self._moved(v, n, out.capacity, index) for v in self.v]
        out.valid = self.valid.expand(n, -1)
        return out

    @staticmethod
    def stack(parts: Sequence["KVCache"]) -> "KVCache":
        """One cache holding the rows of `parts` in order, each part's filled tokens aligned
        to the end (a shorter part gets more left padding, masked out by `valid`)."""
        out = KVCache(len(parts[0].k))
        out.length = max(p.length for p in parts)
        out.capacity = -(-out.length // _BLOCK) * _BLOCK
        rows = sum(p.k[0].shape[0] for p in parts)
        out.valid = torch.zeros(rows, out.length, dtype=torch.bool, device=parts[0].k[0].device)
        for layer in range(len(out.k)):
            # zeros, not empty: the extra padding is masked out, but a masked slot holding
            # NaN bits would still poison its row (0 * NaN in attention's weighted sum)
            k0 = parts[0].k[layer]
            out.k[layer] = k0.new_zeros(rows, k0.shape[1], out.capacity, k0.shape[3])
            out.v[layer] = k0.new_zeros(rows, k0.shape[1], out.capacity, k0.shape[3])
        r = 0
        for p in parts:
            n, lead = p.k[0].shape[0], out.length - p.length
            out.valid[r:r + n, lead:] = p.valid
            for layer in range(len(out.k)):
                out.k[layer][r:r + n, :, lead:out.length] = p.k[layer][:, :, :p.length]
                out.v[layer][r:r + n, :, lead:out.length] = p.v[layer][:, :, :p.length]
            r += n
        return out


def rows_per_pass(model, width: int, keys: int) -> int:
    """How many rows of `width` new tokens (attending to `keys` tokens) one forward pass
    takes: on a CPU as many as keep the widest activation (the MLP's, or attention's fp32
    scores) within PASS_BYTES; elsewhere all of them."""
    if model.device.type != "cpu":
        return 1 << 30
    c = model.config
    mlp = (getattr(c, "intermediate_size", None) or 4 * c.hidden_size) * model.dtype.itemsize
    per_row = width * max(mlp, c.num_attention_heads * keys * 4)
    return max(1, PASS_BYTES // max(1, per_row))


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            valid[i, width - len(s):] = True
    return ids, valid


def _forward_new_tokens(model, cache: KVCache, ids: torch.Tensor, valid: torch.Tensor,
                        start_pos: torch.Tensor | int, keep: int):
    """Run `ids` [B, q] (left-padded, `valid` marks real tokens) after the cached tokens.

    Every new token attends to all cached tokens that are valid (`cache.valid`) and causally
    to the valid new tokens before it.
    Returns logits of the last `keep` positions, [B, keep, V].
    """
    B, q = ids.shape
    dev = ids.device
    prev = cache.length
    cache.reserve(prev + q)
    mask = torch.zeros(B, 1, q, prev + q, dtype=torch.bool, device=dev)
    if prev:
        mask[:, 0, :, :prev] = cache.valid[:, None, :prev]
    causal = torch.ones(q, q, dtype=torch.bool, device=dev).tril()
    mask[:, 0, :, prev:prev + q] = causal[None] & valid[:, None, :]
    # A padding query attends to itself so its softmax is defined; its output is never read.
    diag = torch.arange(q, device=dev)
    mask[:, 0, diag, prev + diag] = True
    pos = start_pos + (valid.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                use_cache=True, logits_to_keep=keep)
    cache.length = prev + q
    cache.valid = torch.cat([cache.valid[:, :prev], valid], dim=1) if prev else valid
    return out.logits


# ---------------------------------------------------------------------------------------
# Generation

@dataclass
class DecodeRequest:
    prompt_ids: list[int]
    seed: int


@dataclass
class DecodeResult:
    tokens: list[int]
    finish_reason: str      # "stop" | "length"


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                  uniforms: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (any float dtype), uniforms [B] in [0, 1) -> token ids [B].

    Inverse-CDF sampling with one uniform per row: temperature, then top-k, then top-p
    (smallest set of most likely tokens whose mass reaches top_p; after top-k, of the
    renormalized top-k), renormalized.
    """
    if temperature <= 0:
        return greedy_tokens(logits)
    # One fp32 copy, scaled in place (a bf16 division would round the logits).
    probs = torch.softmax(logits.to(torch.float32, copy=True).div_(temperature), dim=-1)
    V = probs.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        cum = probs.cumsum(-1)
        idx = torch.searchsorted(cum, (uniforms * cum[:, -1]).unsqueeze(-1)).squeeze(-1)
        return idx.clamp(max=V - 1)
    if top_k > 0:
        vals, idx = probs.topk(min(V, top_k), dim=-1)
        return _pick_in_nucleus(vals, idx, top_p * vals.sum(-1, keepdim=True), uniforms)
    # Pure top-p. Candidates are the top 64 of each row; a row whose nucleus does not fit is
    # widened alone (top 512, 4096, then its whole sorted vocabulary), so one flat row does not
    # widen them all. Exact either way; sorting every row took 12x as long
    # (bench/engine_parts.py).
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.shape[0], device=probs.device)
    for k in [w for w in _NUCLEUS_WIDTHS if w < V] + [V]:
        p = probs.index_select(0, rows)
        vals, idx = p.topk(k, dim=-1) if k < V else p.sort(-1, descending=True)
        fits = vals.sum(-1) >= top_p if k < V else torch.ones_like(rows, dtype=torch.bool)
        done = rows[fits]
        out[done] = _pick_in_nucleus(vals[fits], idx[fits], top_p, uniforms[done])
        rows = rows[~fits]
        if rows.numel() == 0:
            break
    return out


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] -> [B]: the most likely token (the first on ties). max() is ~5x faster than
    argmax() over a bf16 vocabulary on CPU (bench/engine_parts.py)."""
    return logits.max(dim=-1).indices


def _pick_in_nucleus(vals: torch.Tensor, idx: torch.Tensor, mass, uniforms: torch.Tensor):
    """vals/idx [B, k] sorted descending; keep candidates whose preceding mass is below `mass`
    (a float or [B, 1]); inverse CDF over the kept, renormalized -> token ids [B]."""
    before = vals.cumsum(-1) - vals
    kept = torch.where(before < mass, vals, torch.zeros_like(vals))
    cum = kept.cumsum(-1)
    pick = torch.searchsorted(cum, uniforms.unsqueeze(-1) * cum[:, -1:])
    return idx.gather(-1, pick.clamp(max=vals.shape[-1] - 1)).squeeze(-1)


@_inference
def decode_batch(model, requests: Sequence[DecodeRequest], *, temperature: float, top_p: float,
                 top_k: int, max_tokens: int, eos_ids: set[int], pad_id: int,
                 should_stop: Callable[[list[int]], bool] | None = None,
                 on_finish: Callable[[int], None] | None = None) -> list[DecodeResult]:
    """Decode a batch to completion. Rows stop at an end token, at `should_stop`, or at max."""
    n = len(requests)
    dev = model.device
    gens = [torch.Generator().manual_seed(r.seed) for r in requests]
    cache, logits, next_pos = _prefill(model, [r.prompt_ids for r in requests], pad_id)
    rows = torch.arange(n)                                  # batch slot -> request index (cpu)
    out: list[list[int]] = [[] for _ in range(n)]
    results: list[DecodeResult | None] = [None] * n
    finished_slots: list[int] = []
    for step in range(max_tokens):
        if temperature > 0:
            u = torch.stack([torch.rand((), generator=gens[int(r)]) for r in rows]).to(dev)
            nxt = sample_tokens(logits, temperature, top_p, top_k, u)
        else:
            nxt = greedy_tokens(logits)
        for slot, (r, t) in enumerate(zip(rows.tolist(), nxt.tolist())):
            if results[r] is not None:
                continue
            reason = None
            if t in eos_ids:
                reason = "stop"
            else:
                out[r].append(t)
                if should_stop is not None and should_stop(out[r]):
                    reason = "stop"
                elif len(out[r]) >= max_tokens:
                    reason = "length"
            if reason:
                results[r] = DecodeResult(out[r], reason)
                finished_slots.append(slot)
                if on_finish:
                    on_finish(r)
        if all(res is not None for res in results):
            break
        # Compacting copies the cache (about one step's time): do it when it pays.
        if len(finished_slots) >= max(1, len(rows) // 8):
            done = set(finished_slots)
            keep_cpu = torch.tensor([s for s in range(len(rows)) if s not in done])
            keep = keep_cpu.to(dev)
            cache.select(keep)
            cache.valid = cache.valid.index_select(0, keep)
            rows, nxt, next_pos = rows[keep_cpu], nxt[keep], next_pos[keep]
            finished_slots = []
        step_ids = nxt.unsqueeze(-1)
        logits = _decode_step(model, cache, step_ids, next_pos)
        next_pos = next_pos + 1
    for r in range(n):
        if results[r] is None:
            results[r] = DecodeResult(out[r], "length")
    return results  # type: ignore[return-value]


def _prefill(model, prompts: Sequence[list[int]], pad_id: int):
    """Prefill a batch; a long prefix shared by every prompt (few-shot exemplars, a system
    prompt) is computed once and broadcast. Returns (cache, last logits [B, V], next positions
    [B, 1])."""
    n, dev = len(prompts), model.device
    # Each row keeps at least one token of its own, whose logits start its decoding.
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    prefix = None
    if n > 1 and shared >= MIN_SHARED_DECODE_PREFIX:
        prefix = prefill_prefix(model, list(prompts[0][:shared]))
    else:
        shared = 0
    tails = [p[shared:] for p in prompts]
    width = max(map(len, tails))
    step = rows_per_pass(model, width, shared + width)
    parts, logits = [], []
    for a in range(0, n, step):
        ids, valid = _left_pad(tails[a:a + step], pad_id)
        if prefix is not None:
            cache = prefix.broadcast(len(ids), shared + ids.shape[1])
        else:
            cache = KVCache(model.config.num_hidden_layers)
            cache.reserve(ids.shape[1])
        logits.append(_forward_new_tokens(model, cache, ids.to(dev), valid.to(dev), shared,
                                          keep=1)[:, -1])
        parts.append(cache)
    cache = parts[0] if len(parts) == 1 else KVCache.stack(parts)
    lengths = torch.tensor([[len(t)] for t in tails], dtype=torch.long, device=dev)
    return cache, torch.cat(logits), shared + lengths


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first, k = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = next((i for i in range(k) if s[i] != first[i]), k)
    return k


def _decode_step(model, cache: KVCache, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    prev = cache.length
    cache.reserve(prev + 1)
    B = ids.shape[0]
    valid = torch.ones(B, 1, dtype=torch.bool, device=ids.device)
    cache.valid = torch.cat([cache.valid, valid], dim=1)
    add_mask = torch.zeros(B, prev + 1, dtype=model.dtype, device=ids.device)
    add_mask.masked_fill_(~cache.valid, float("-inf"))
    out = model(input_ids=ids, attention_mask=add_mask[:, None, None, :], position_ids=pos,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.length = prev + 1
    return out.logits[:, -1]


# ---------------------------------------------------------------------------------------
# Choice scoring

@dataclass
class ScoreRow:
    """Input tokens after a shared prefix, and the tokens whose log-probs are wanted.

    `targets` are the last len(targets) tokens of the full sequence: the row's input is
    prefix + tokens, and targets[t] is predicted at input position len(tokens) - len(targets) + t.
    """
    tokens: list[int]
    targets: list[list[int]]     # one target sequence per option read from this row


@_inference
def prefill_prefix(model, prefix: list[int]) -> KVCache:
    cache = KVCache(model.config.num_hidden_layers)
    ids = torch.tensor([prefix], dtype=torch.long, device=model.device)
    _forward_new_tokens(model, cache, ids, torch.ones_like(ids, dtype=torch.bool), 0, keep=1)
    return cache


@_inference
def score_rows(model, prefix_cache: KVCache | None, rows: Sequence[ScoreRow],
               pad_id: int) -> list[list[float]]:
    """Sum of target log-probs for each (row, target sequence): one forward pass, or on a
    CPU as few passes of `rows_per_pass` rows as the batch needs."""
    plen = 0 if prefix_cache is None else prefix_cache.length
    width = max(len(r.tokens) for r in rows)
    step = rows_per_pass(model, width, plen + width)
    out = []
    for a in range(0, len(rows), step):
        part = rows[a:a + step]
        out += (_score_rows_causal(model, part, pad_id) if prefix_cache is None else
                _score_rows_after(model, prefix_cache, part, pad_id))
    return out


def _score_rows_after(model, prefix_cache: KVCache, rows: Sequence[ScoreRow],
                      pad_id: int) -> list[list[float]]:
    """Rows that continue one cached prefix: left-padded after it."""
    ids, valid = _left_pad([r.tokens for r in rows], pad_id)
    ids, valid = ids.to(model.device), valid.to(model.device)
    keep = max(len(t) for r in rows for t in r.targets)
    keep = min(keep, ids.shape[1])
    cache = prefix_cache.broadcast(len(rows), prefix_cache.length + ids.shape[1])
    logp = torch.log_softmax(_forward_new_tokens(model, cache, ids, valid, prefix_cache.length,
                                                 keep=keep).float(), dim=-1)
    out = []
    for i, r in enumerate(rows):
        vals = []
        for target in r.targets:
            first = keep - len(target)
            vals.append(float(sum(logp[i, first + t, tok] for t, tok in enumerate(target))))
        out.append(vals)
    return out


def _score_rows_causal(model, rows: Sequence[ScoreRow], pad_id: int) -> list[list[float]]:
    """Rows without a shared prefix: right-padded, so real tokens never see padding and
    attention needs no mask (an explicit mask costs ~25% here). Logits only at read positions.
    """
    width = max(len(r.tokens) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    reads: list[list[list[int]]] = []          # row -> target -> input positions
    for i, r in enumerate(rows):
        ids[i, :len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        reads.append([[len(r.tokens) - len(t) + k for k in range(len(t))] for t in r.targets])
    positions = sorted({p for rr in reads for t in rr for p in t})
    column = {p: c for c, p in enumerate(positions)}
    pos_ids = torch.arange(width).unsqueeze(0).expand(len(rows), -1)
    out = model(input_ids=ids.to(model.device), position_ids=pos_ids.to(model.device),
                use_cache=False,
                logits_to_keep=torch.tensor(positions, device=model.device))
    logp = torch.log_softmax(out.logits.float(), dim=-1)      # [B, len(positions), V]
    return [[float(sum(logp[i, column[p], tok] for p, tok in zip(pp, t)))
             for pp, t in zip(reads[i], r.targets)] for i, r in enumerate(rows)]
