"""Generation throughput: our backend against a naive one-prompt-at-a-time fp32 loop.

    .venv/bin/python bench/generate.py [--batches 64 128 256] [--new-tokens 128] [--naive-prompts 8]

Prints one table: tokens/s of the naive loop (transformers `generate`, fp32, batch 1, greedy),
of our batched backend at each batch size (greedy and sampled), the machine's roofline (measured
matmul GFLOP/s / (2 x parameters) tokens/s), and a quality check: the log-likelihood of each
fp32 greedy output under the fast path, against fp32's own (target: within 1% on average over
the outputs; the worst single output is printed beside it).
Not a test: numbers vary with the machine and its load; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402

from constitutional.backends import kv_engine  # noqa: E402
from constitutional.backends.base import Sampling  # noqa: E402
from constitutional.backends.transformers_backend import (TransformersBackend,  # noqa: E402
                                                          load_model_and_tokenizer, pick_dtype)
from constitutional.models import resolve_model  # noqa: E402
from constitutional.prompts_io import load_prompts  # noqa: E402


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def chats(n: int):
    rows = load_prompts("bundled:helpful")[1] + load_prompts("bundled:redteam")[1]
    return [r.messages for r in (rows * (n // len(rows) + 1))[:n]]


def naive_loop(model, tok, prompts, new_tokens):
    """What a hand-rolled script does: fp32, one prompt at a time, model.generate."""
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        outs.append((ids["input_ids"][0].tolist(), out[0, ids["input_ids"].shape[1]:].tolist()))
    seconds = time.perf_counter() - t0
    return outs, sum(len(o) for _, o in outs) / seconds


def loglik_fp32(model, prompt_ids, new_ids) -> float:
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + new_ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return sum(logp[n + t - 1, tok].item() for t, tok in enumerate(new_ids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--naive-prompts", type=int, default=8)
    args = ap.parse_args()
    path = resolve_model(args.model).path
    cpu = torch.device("cpu")
    fast_dtype = pick_dtype("auto", cpu)

    fp32, tok = load_model_and_tokenizer(path, dtype=torch.float32, device=cpu)
    n_params = sum(p.numel() for p in fp32.parameters())
    naive_prompts = chats(args.naive_prompts)
    naive_outs, naive_tps = naive_loop(fp32, tok, naive_prompts, args.new_tokens)
    ll_ref = [loglik_fp32(fp32, p, o) for p, o in naive_outs]
    del fp32

    model, tok = load_model_and_tokenizer(path, dtype=fast_dtype, device=cpu)
    backend = TransformersBackend(model, tok, args.model)
    rows = [("naive: transformers generate, fp32, batch 1, greedy", 1, naive_tps)]
    for b in args.batches:
        backend.batch_size = b
        prompts = chats(b)
        # Warm-up on the same batch: one-time costs (packing the weights, the allocator's first
        # growth to batch size) are paid once per run, not per batch.
        backend.generate(prompts, Sampling(temperature=0.0, max_tokens=4))
        for label, s in (("greedy", Sampling(temperature=0.0, max_tokens=args.new_tokens)),
                         ("sampled T=0.7 top-p 0.95", Sampling(temperature=0.7, top_p=0.95,
                                                               max_tokens=args.new_tokens))):
            t0 = time.perf_counter()
            outs = backend.generate(prompts, s)
            tps = sum(c[0].tokens for c in outs) / (time.perf_counter() - t0)
            rows.append((f"ours: {str(fast_dtype)[6:]}, KV engine, {label}", b, tps))

    # Quality: fp32 greedy outputs scored by the fast path (one forward each).
    ll_fast = [kv_engine.score_rows(model, None, [kv_engine.ScoreRow(p + o[:-1], [o])],
                                    backend.pad_id)[0][0] for p, o in naive_outs]
    rel = [abs(f - r) / abs(r) for f, r in zip(ll_fast, ll_ref)]

    peak = {d: matmul_gflops(d) for d in (torch.float32, fast_dtype)}
    print(f"\nmodel {args.model}: {n_params / 1e6:.1f}M parameters, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'engine':58} {'batch':>5} {'tokens/s':>9} {'x naive':>8}")
    for label, b, tps in rows:
        print(f"{label:58} {b:>5} {tps:>9.0f} {tps / naive_tps:>8.1f}")
    for d, g in peak.items():
        print(f"roofline {str(d)[6:]}: matmul {g:.0f} GFLOP/s -> {g * 1e9 / (2 * n_params):.0f} "
              "tokens/s (compute bound, batched)")
    print(f"quality: log-likelihood of fp32 greedy outputs, fast path vs fp32, relative "
          f"difference over {len(rel)} outputs: mean {sum(rel) / len(rel) * 100:.2f}% "
          f"(target < 1%), worst {max(rel) * 100:.2f}%")


if __name__ == "__main__":
    main()
