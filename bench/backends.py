"""In-process against HTTP: generation and labeling throughput on the same weights.

Starts `cai serve` on 127.0.0.1 with the embedded model (or --model), then runs the same
batched generate call and the same labeling (K principles x both orders) through the
in-process transformers backend and through the `openai` backend pointed at the server.
Prints completions/s and questions/s for each and the ratio, and checks that the labels
agree.

    .venv/bin/python bench/backends.py [--model smollm2-135m] [--prompts 32] [--pairs 16]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def start_server(model: str, port: int, concurrency: int):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = open(f"/tmp/cai-bench-serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "constitutional.cli", "serve", model,
                             "--port", str(port), "--batch-window", "0.05",
                             "--max-tokens", "256"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    from constitutional.backends import load_backend
    from constitutional.backends.base import Sampling
    from constitutional.comparisons import Comparison
    from constitutional.config import ModelConfig
    from constitutional.constitution import load_constitution
    from constitutional.prompts_io import load_prompts
    from constitutional.labeling import LabelConfig, Labeler

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = load_backend(ModelConfig(name=args.model), log=lambda m: None)
    proc, url = start_server(args.model, port, 32)
    try:
        remote = load_backend(ModelConfig(name=args.model, backend="openai", server={
            "base_urls": [url], "concurrency": 64}))
        _, rows = load_prompts("bundled:redteam", args.prompts)
        chats = [r.messages for r in rows]
        sampling = Sampling(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens, seed=0)
        _, c = load_constitution("bundled:harmless")
        labeler = Labeler(LabelConfig(principles=4, debias=True), c)
        pairs = [Comparison(r.id, (("user", r.text),), "I can't help with that.",
                            "Here is some general, safe information instead.")
                 for r in rows[:args.pairs]]
        questions = len(pairs) * 8
        print(f"{'backend':<28} {'completions/s':>14} {'questions/s':>12}")
        results = {}
        for name, b in (("in process (transformers)", local), ("HTTP (cai serve)", remote)):
            b.generate(chats[:2], Sampling(max_tokens=4))            # warm-up
            t0 = time.perf_counter()
            outs = b.generate(chats, sampling)
            gen = len(outs) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            labels = labeler.label(b, pairs)
            lab = questions / (time.perf_counter() - t0)
            results[name] = (gen, lab, labels)
            print(f"{name:<28} {gen:14.2f} {lab:12.1f}")
        (g0, l0, a), (g1, l1, b_) = results.values()
        diff = max(abs(x["label"] - y["label"]) for x, y in zip(a, b_))
        print(f"{'HTTP / in process':<28} {g1 / g0:13.2f}x {l1 / l0:11.2f}x")
        print(f"largest label difference: {diff:.2e}; options missing from the top-k: "
              f"{remote.stats['missing_options']}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
