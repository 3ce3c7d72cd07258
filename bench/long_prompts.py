"""Long prompts in one generate call: memory stays bounded (batches split to fit).

    .venv/bin/python bench/long_prompts.py [--prompts 256] [--tokens 2000] [--new-tokens 8]

Generates from N prompts of about T tokens each on the embedded model (greedy) and prints
one table: the KV budget, the batches the backend made, the time, prefill tokens/s and the
peak resident memory of the process, against the same call on the first 8 prompts alone
(the baseline of the same run). The issue's bar: 256 prompts of 2,000 tokens complete on a
24 GB machine. Not a test: times vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from constitutional.backends import kv_engine  # noqa: E402
from constitutional.backends.base import Sampling  # noqa: E402
from constitutional.backends.transformers_backend import (TransformersBackend,  # noqa: E402
                                                          kv_budget_bytes)
from constitutional.config import ModelConfig  # noqa: E402

WORDS = ("the river ran past the old mill where a fox and a dog met each morning to talk about "
         "the weather, the harvest and the long road to the city beyond the hills ").split()


def prompt(i: int, tokens: int, b: TransformersBackend) -> list[dict]:
    words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(tokens)]
    text = " ".join(words)
    ids = b.tokenizer(text)["input_ids"][:tokens - 16]
    return [{"role": "user", "content": f"Story {i}: " + b.tokenizer.decode(ids)}]


def run(b: TransformersBackend, prompts, new_tokens: int) -> dict:
    calls = []
    real = kv_engine.decode_batch

    def counted(model, reqs, **kw):
        calls.append(len(reqs))
        return real(model, reqs, **kw)
    kv_engine.decode_batch = counted
    t0 = time.perf_counter()
    outs = b.generate(prompts, Sampling(temperature=0.0, max_tokens=new_tokens))
    seconds = time.perf_counter() - t0
    kv_engine.decode_batch = real
    n_tokens = sum(len(b.encode(p)) for p in prompts)
    return {"prompts": len(prompts), "batches": calls, "seconds": seconds,
            "prefill_tps": n_tokens / seconds, "done": sum(len(o) for o in outs),
            "mean_tokens": n_tokens / len(prompts),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()
    b = TransformersBackend.from_config(ModelConfig(name="smollm2-135m"), log=lambda m: None)
    prompts = [prompt(i, args.tokens, b) for i in range(args.prompts)]
    budget = kv_budget_bytes(b.model.device) / 2**30
    base = run(b, prompts[:8], args.new_tokens)
    full = run(b, prompts, args.new_tokens)
    print(f"model smollm2-135m ({b.model.dtype}), KV budget {budget:.1f} GiB, "
          f"{b._kv_bytes_per_token() / 1024:.1f} KiB of KV per token, batch_size {b.batch_size}")
    print("| call | prompts | mean prompt tokens | batches | seconds | prefill tokens/s | "
          "peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("baseline: first 8", base), (f"all {args.prompts}", full)):
        print(f"| {name} | {r['prompts']} | {r['mean_tokens']:.0f} | "
              f"{len(r['batches'])} ({', '.join(map(str, r['batches']))}) | "
              f"{r['seconds']:.1f} | {r['prefill_tps']:.0f} | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
