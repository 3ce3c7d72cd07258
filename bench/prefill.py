"""A many-row prefill in one forward pass against passes of a few rows (kv_engine.PASS_BYTES).

    .venv/bin/python bench/prefill.py [--model qwen2.5-coder-1.5b] [--rows 64] [--repeats 2]
                                      [--agree-tokens 24]

Prefills `rows` critique requests (the bundled red-team prompts with a canned answer, in the
quickstart critic's transcript layout and its first critique request, chat template applied)
on the model in bf16, and prints one table: the rows of each forward pass, seconds, prefill
tokens/s and the minor page faults of the call. The first row of each repeat is the whole
batch in one pass (the engine before PASS_BYTES), the second the engine's default passes; the
repeats alternate, so a change in the machine's load shows as a spread within each kind.
Last, both ways decode `agree-tokens` greedy tokens and the rows whose tokens are identical
are counted: in bf16 a matmul over another row count may round differently.
Not a test: times vary with the machine and its load.
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
from constitutional.constitution import load_constitution  # noqa: E402
from constitutional.backends.transformers_backend import TransformersBackend  # noqa: E402
from constitutional.config import ModelConfig  # noqa: E402
from constitutional.prompts_io import load_prompts  # noqa: E402
from constitutional.transcripts import from_messages, render  # noqa: E402

ANSWER = ("Sure, here is how you could go about it. First, find out what you need and where "
          "to get it. Then follow these steps one at a time, checking each before the next, "
          "and keep it to yourself so that nobody notices what you are doing.")


def critique_requests(n: int) -> list[list[dict]]:
    """What the quickstart's critic is asked in its first step, for a canned answer."""
    _, rows = load_prompts("bundled:redteam", n)
    _, constitution = load_constitution("bundled:harmless")
    request = constitution.critique_revision[0].critique
    return [render([], from_messages(r.messages) + [("Assistant", ANSWER),
                                                   ("CritiqueRequest", request)],
                   "transcript") for r in rows]


def greedy(b: TransformersBackend, ids: list[list[int]], tokens: int) -> list[list[int]]:
    reqs = [kv_engine.DecodeRequest(x, i) for i, x in enumerate(ids)]
    return [r.tokens for r in kv_engine.decode_batch(
        b.model, reqs, temperature=0.0, top_p=1.0, top_k=0, max_tokens=tokens, eos_ids=set(),
        pad_id=b.pad_id)]


def timed_prefill(b: TransformersBackend, ids: list[list[int]]) -> tuple[float, int]:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    greedy(b, ids, 1)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--agree-tokens", type=int, default=24)
    args = ap.parse_args()
    b = TransformersBackend.from_config(ModelConfig(name=args.model, dtype="bfloat16"),
                                        log=lambda *a: None)
    ids = sorted((b.encode(p) for p in critique_requests(args.rows)), key=len)
    tokens, width = sum(map(len, ids)), max(map(len, ids))
    timed_prefill(b, ids[:2])                                             # warm-up
    default = kv_engine.PASS_BYTES
    print(f"\n{args.model}, bf16, {args.rows} prompts, {tokens} tokens (longest {width}), "
          f"{os.cpu_count()} CPUs\n")
    print("| forward passes | rows a pass | seconds | prefill tokens/s | minor page faults |")
    print("|---|---|---|---|---|")
    for _ in range(args.repeats):
        for budget in (1 << 50, default):
            kv_engine.PASS_BYTES = budget
            step = min(len(ids), kv_engine.rows_per_pass(b.model, width, width))
            seconds, faults = timed_prefill(b, ids)
            kind = "one (the whole batch)" if step == len(ids) else "PASS_BYTES (default)"
            print(f"| {kind} | {step} | {seconds:.1f} | {tokens / seconds:.0f} | {faults} |",
                  flush=True)
    if args.agree_tokens:
        kv_engine.PASS_BYTES = 1 << 50
        whole = greedy(b, ids, args.agree_tokens)
        kv_engine.PASS_BYTES = default
        same = sum(x == y for x, y in zip(whole, greedy(b, ids, args.agree_tokens)))
        print(f"\n{same} of {len(ids)} rows decode the same {args.agree_tokens} greedy tokens "
              "in passes as in one pass")
    kv_engine.PASS_BYTES = default


if __name__ == "__main__":
    main()
