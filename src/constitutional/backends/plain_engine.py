"""The path for models our KV engine does not compute exactly: transformers' own code.

`kv_engine` runs full causal attention over its own cache. That is exact for the families it
is tested on (tests/test_conformance.py) as long as every sequence fits inside the model's
attention window. A model with a feature the engine does not implement is routed here instead,
with one line saying why, never run with full attention in place of a window:

- attention logit soft-capping (Gemma 2), linear-attention or state-space layers (hybrid
  caches), attention sinks, or a model family the conformance tests do not cover: always;
- a sliding window (Mistral, Gemma 3's local layers, Qwen with `use_sliding_window`): only for
  calls whose longest sequence (prompt + new tokens) passes the window, where the window
  changes the result; shorter ones are the same computation and keep the engine.

Here generation is `model.generate` (greedy rows batched with left padding; sampled rows one at
a time, each seeded as the engine seeds it, so a row's sample does not depend on its batch)
and scoring one causal forward over right-padded rows, with the model's own attention
implementation (its masks, windows and caps).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from constitutional.backends import kv_engine

# model_type values whose attention the engine computes exactly (tests/test_conformance.py)
ENGINE_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3"}
FULL = "full_attention"


def always_plain(config) -> str | None:
    """Why no call of this model can use the engine (None: the engine is exact for it, up to
    its attention window)."""
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    other = sorted({t for t in (getattr(config, "layer_types", None) or []) if t not in
                    (FULL, "sliding_attention")})
    if other:
        return f"{', '.join(other)} layers"
    if getattr(config, "model_type", None) not in ENGINE_FAMILIES:
        return f"model type '{getattr(config, 'model_type', '?')}' is not one the engine is " \
               "tested on"
    return None


def attention_window(config) -> int | None:
    """The narrowest attention window of any layer (None: every layer sees the whole
    sequence)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    if getattr(config, "use_sliding_window", None) is False:
        return None
    return int(window)


def context_length(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@contextlib.contextmanager
def native_attention(model, impl: str):
    """Run the model with its own attention implementation (the engine's is switched off)."""
    before = model.config._attn_implementation
    model.config._attn_implementation = impl
    try:
        yield
    finally:
        model.config._attn_implementation = before


class _StopRows:
    """A StoppingCriteria: each row stops at its own stop string (after the prompt)."""

    def __init__(self, prompt_width: int, should_stop: Callable[[list[int]], bool]):
        self.width, self.should_stop = prompt_width, should_stop

    def __call__(self, input_ids, scores, **kw):
        return torch.tensor([self.should_stop(row[self.width:].tolist()) for row in input_ids],
                            device=input_ids.device)


def generate(model, requests: Sequence[kv_engine.DecodeRequest], *, temperature: float,
             top_p: float, top_k: int, max_tokens: int, eos_ids: set[int], pad_id: int,
             should_stop: Callable[[list[int]], bool] | None = None
             ) -> list[kv_engine.DecodeResult]:
    """`kv_engine.decode_batch`'s contract on `model.generate`."""
    if temperature > 0:        # one row at a time: each one's own seed
        out = []
        for r in requests:
            torch.manual_seed(r.seed)
            out += _generate(model, [r.prompt_ids], True, temperature, top_p, top_k,
                             max_tokens, eos_ids, pad_id, should_stop)
        return out
    return _generate(model, [r.prompt_ids for r in requests], False, 1.0, 1.0, 0, max_tokens,
                     eos_ids, pad_id, should_stop)


def _generate(model, prompts, sample, temperature, top_p, top_k, max_tokens, eos_ids, pad_id,
              should_stop):
    from transformers import GenerationConfig, StoppingCriteriaList

    ids, valid = kv_engine._left_pad(prompts, pad_id)
    width = ids.shape[1]
    stops = StoppingCriteriaList([_StopRows(width, should_stop)]) if should_stop else None
    # a config of our settings alone: the model's generation_config.json (repetition
    # penalties, default top-k) would change what the engine's path computes
    settings = GenerationConfig(do_sample=sample, max_new_tokens=max_tokens,
                                eos_token_id=sorted(eos_ids) or None, pad_token_id=pad_id,
                                **(dict(temperature=temperature, top_p=top_p, top_k=top_k)
                                   if sample else {}))
    with torch.inference_mode():
        seqs = model.generate(input_ids=ids.to(model.device),
                              attention_mask=valid.long().to(model.device),
                              generation_config=settings, stopping_criteria=stops)
    out = []
    for row in seqs[:, width:].tolist():
        tokens, reason = [], "length"
        for t in row:
            if t in eos_ids:
                reason = "stop"
                break
            tokens.append(t)
            if should_stop is not None and should_stop(tokens):
                reason = "stop"
                break
        out.append(kv_engine.DecodeResult(tokens, reason))
    return out


def score_rows(model, rows: Sequence[kv_engine.ScoreRow], pad_id: int) -> list[list[float]]:
    """Target log-probs from one causal forward of right-padded rows (no mask is needed:
    real tokens never see the padding after them)."""
    with torch.inference_mode():
        return kv_engine._score_rows_causal(model, rows, pad_id)
