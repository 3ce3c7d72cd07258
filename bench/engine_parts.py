"""Where the generation engine's speed comes from: each piece against its plain alternative.

    .venv/bin/python bench/engine_parts.py [--rows 128]

One table, embedded model in the fast dtype, the bundled prompts, all in one run:
- greedy pick over the vocabulary: `argmax` against `max().indices` (kv_engine.greedy_tokens);
- top-p sampling (T=0.7, p=0.95): a full sort of every row against our top-64-first search;
- the LM head at `rows` rows: plain nn.Linear against oneDNN-prepacked weights;
- decode attention per layer (rows x 192 cached tokens, read as views of a bigger reserved
  buffer, as the engine does): two batched matmuls against SDPA, in the fast dtype and fp32;
- a whole batch (`rows` prompts, 128 new tokens): decode attention by two batched matmuls
  against SDPA;
- page faults of that batch in a fresh process, with glibc's defaults against
  `keep_freed_memory` (cpu_runtime.py).
Not a test: the machine is shared and noisy; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AttentionInterface  # noqa: E402

from constitutional.backends import kv_engine, transformers_backend  # noqa: E402
from constitutional.backends.base import Sampling  # noqa: E402
from constitutional.backends.cpu_runtime import packed_linears  # noqa: E402
from constitutional.backends.transformers_backend import (TransformersBackend,  # noqa: E402
                                                          load_model_and_tokenizer, pick_dtype)
from constitutional.models import resolve_model  # noqa: E402
from constitutional.prompts_io import load_prompts  # noqa: E402


def ms(fn, reps: int = 10) -> float:
    """Best of `reps` calls after one warm-up, in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def full_sort_top_p(logits, temperature, top_p, uniforms):
    """The plain exact nucleus: sort every row's whole vocabulary."""
    probs = torch.softmax(logits.float() / temperature, -1)
    vals, idx = probs.sort(-1, descending=True)
    kept = torch.where(vals.cumsum(-1) - vals < top_p, vals, torch.zeros_like(vals))
    cum = kept.cumsum(-1)
    pick = torch.searchsorted(cum, uniforms[:, None] * cum[:, -1:])
    return idx.gather(-1, pick.clamp(max=vals.shape[-1] - 1)).squeeze(-1)


def load(rows: int):
    path = resolve_model("smollm2-135m").path
    dtype = pick_dtype("auto", torch.device("cpu"))
    model, tok = load_model_and_tokenizer(path, dtype=dtype, device=torch.device("cpu"))
    backend = TransformersBackend(model, tok, "smollm2-135m", batch_size=rows)
    texts = load_prompts("bundled:helpful")[1] + load_prompts("bundled:redteam")[1]
    chats = [r.messages for r in (texts * (rows // len(texts) + 1))[:rows]]
    return model, backend, chats


def matmul_decode_attention(module, query, key, value, attention_mask, scaling=None, **kw):
    """The engine's attention with decoding always on two batched matmuls (its fp32 path)."""
    if query.shape[2] == 1:
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        return kv_engine._decode_attention_fp32(query, key, value, attention_mask, scaling), None
    return kv_engine._attention(module, query, key, value, attention_mask, scaling, **kw)


def whole_batch(backend, chats) -> float:
    t0 = time.perf_counter()
    backend.generate(chats, Sampling(temperature=0.0, max_tokens=128))
    return (time.perf_counter() - t0) * 1000


def child(rows: int, allocator: str) -> None:
    """One batch in a fresh process; prints its page faults and seconds as JSON."""
    if allocator == "glibc defaults":
        transformers_backend.keep_freed_memory = lambda: None
    _, backend, chats = load(rows)
    backend.generate(chats[:2], Sampling(temperature=0.0, max_tokens=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = whole_batch(backend, chats) / 1000
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"faults": faults, "seconds": seconds}))


def page_faults(rows: int, allocator: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rows", str(rows), "--child", allocator],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.rows, args.child)
    model, backend, chats = load(args.rows)
    ids = [backend.encode(c) for c in chats]
    rows, table = args.rows, []
    with torch.inference_mode():
        _, logits, _ = kv_engine._prefill(model, ids, backend.pad_id)
        table.append(("greedy pick, [rows, vocabulary]", "argmax",
                      ms(lambda: logits.argmax(-1)), "max().indices",
                      ms(lambda: kv_engine.greedy_tokens(logits))))
        u = torch.rand(rows)
        table.append(("top-p sampling, T=0.7 p=0.95", "full sort",
                      ms(lambda: full_sort_top_p(logits, 0.7, 0.95, u), 3), "top 64 first",
                      ms(lambda: kv_engine.sample_tokens(logits, 0.7, 0.95, 0, u))))
        h = torch.randn(rows, 1, model.config.hidden_size, dtype=model.dtype)
        plain = ms(lambda: model.lm_head(h))
        with packed_linears(model):
            packed = ms(lambda: model.lm_head(h))
        table.append(("LM head", "plain weights", plain, "prepacked", packed))
        H = model.config.num_attention_heads
        Hkv = model.config.num_key_value_heads
        d = getattr(model.config, "head_dim", None) or model.config.hidden_size // H
        for dtype in (model.dtype, torch.float32):
            q = torch.randn(rows, H, 1, d, dtype=dtype)
            k, v = (torch.randn(rows, Hkv, 320, d, dtype=dtype)[:, :, :192] for _ in range(2))
            mask = torch.zeros(rows, 1, 1, 192, dtype=dtype)
            table.append((f"decode attention, one layer, {str(dtype)[6:]}", "2 batched matmuls",
                          ms(lambda: kv_engine._decode_attention_fp32(q, k, v, mask, d ** -0.5),
                             30),
                          "SDPA", ms(lambda: F.scaled_dot_product_attention(
                              q, k, v, attn_mask=mask, enable_gqa=True), 30)))
    backend.generate(chats, Sampling(temperature=0.0, max_tokens=4))
    AttentionInterface.register(kv_engine.ATTN_NAME, matmul_decode_attention)
    by_matmuls = whole_batch(backend, chats)
    AttentionInterface.register(kv_engine.ATTN_NAME, kv_engine._attention)
    table.append((f"whole batch, 128 new tokens, {str(model.dtype)[6:]}", "2 batched matmuls",
                  by_matmuls, "SDPA", whole_batch(backend, chats)))
    glibc, kept = (page_faults(rows, a) for a in ("glibc defaults", "keep freed memory"))

    print(f"\nmodel smollm2-135m in {str(model.dtype)[6:]}, rows = {rows}, "
          f"{torch.get_num_threads()} threads; best of several calls, milliseconds")
    print("| piece | plain | ms | ours | ms | x |\n|---|---|---|---|---|---|")
    for piece, a, ta, b, tb in table:
        print(f"| {piece} | {a} | {ta:.2f} | {b} | {tb:.2f} | {ta / tb:.2f} |")
    print(f"| page faults of that batch, fresh process | glibc defaults | {glibc['faults']} "
          f"({glibc['seconds']:.1f} s) | keep freed memory | {kept['faults']} "
          f"({kept['seconds']:.1f} s) | {glibc['faults'] / kept['faults']:.2f} |")


if __name__ == "__main__":
    main()
