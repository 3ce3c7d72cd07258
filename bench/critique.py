"""Critique stage speed: batched rounds (ours) against a per-prompt loop, same model, same run.

Embedded SmolLM2-135M-Instruct, bundled red-team prompts, the default constitution with one
few-shot exemplar, one critique -> revision round, 64 new tokens per step. The per-prompt loop
runs each chain alone (answer, critique, revision), as a hand-rolled script would; ours runs
each step as one batched call over all prompts, with the few-shot prefix prefilled once.

    .venv/bin/python bench/critique.py [--prompts 48] [--loop-prompts 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--loop-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()

    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.constitution import load_constitution
    from constitutional.prompts_io import load_prompts
    from constitutional.stages.critique import CritiqueConfig, _shots, critique_chunk

    cfg = CritiqueConfig(few_shot=1)
    cfg.sampling.max_tokens = a.max_tokens
    _, constitution = load_constitution(cfg.constitution)
    shots = _shots(constitution, cfg)
    _, rows = load_prompts("bundled:redteam", a.prompts)
    backend = load_backend(ModelConfig(), log=lambda m: None)
    critique_chunk(backend, rows[:2], constitution, shots, cfg)     # warm-up

    t = time.perf_counter()
    for r in rows[:a.loop_prompts]:
        critique_chunk(backend, [r], constitution, shots, cfg)
    loop = a.loop_prompts / (time.perf_counter() - t)
    t = time.perf_counter()
    out = critique_chunk(backend, rows, constitution, shots, cfg)
    ours = len(out) / (time.perf_counter() - t)

    print(f"critique -> revision, 1 round, {a.max_tokens} tokens per step, 1 exemplar")
    print("| method | prompts | rounds/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| per-prompt loop | {a.loop_prompts} | {loop:.3f} | 1.0x |")
    print(f"| ours, batched steps | {len(rows)} | {ours:.3f} | {ours / loop:.1f}x |")


if __name__ == "__main__":
    main()
