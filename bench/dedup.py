"""Near-duplicate screening speed: our ROUGE-L index against scoring every kept instruction.

Instructions: the seed tasks (--seeds, default the bundled 16; ../shared/data/seed_tasks.jsonl
has Self-Instruct's 175) recombined into N synthetic instructions, a third of them light
edits of an earlier one (so duplicates are there to find). Both methods screen the same list
in the same order with the same threshold; the naive one is what Self-Instruct's script does
(rouge_score against every kept instruction) and runs only up to --naive-max items.

    .venv/bin/python bench/dedup.py [--sizes 1000,5000,20000] [--naive-max 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def synthetic(seeds: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = sorted({w for s in seeds for w in s.split()})
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.33:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            a, b = rng.sample(seeds, 2)
            wa, wb = a.split(), b.split()
            words = wa[:rng.randint(2, len(wa))] + wb[rng.randint(0, len(wb) - 1):]
            words += rng.sample(vocab, 3)
        out.append(" ".join(words))
    return out


def naive(texts: list[str], threshold: float) -> tuple[int, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[str] = []
    t0 = time.perf_counter()
    for t in texts:
        if all(scorer.score(k, t)["rougeL"].fmeasure <= threshold for k in kept):
            kept.append(t)
    return len(kept), time.perf_counter() - t0


def indexed(texts: list[str], threshold: float) -> tuple[int, float, int]:
    from constitutional.selfalign.dedup import RougeIndex

    index = RougeIndex(threshold)
    t0 = time.perf_counter()
    for t in texts:
        if index.near_duplicate(t) is None:
            index.add(t)
    return len(index), time.perf_counter() - t0, index.exact_scored


def main() -> None:
    from constitutional.selfalign.instructions import load_seed_tasks

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="bundled:seed_tasks")
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--naive-max", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()
    seeds = load_seed_tasks(args.seeds)
    print(f"{'instructions':>12} {'kept':>7} {'index s':>9} {'exact pairs':>12} "
          f"{'naive s':>9} {'speed-up':>9}")
    for n in map(int, args.sizes.split(",")):
        texts = synthetic(seeds, n)
        kept, t_idx, exact = indexed(texts, args.threshold)
        if n <= args.naive_max:
            kept_naive, t_naive = naive(texts, args.threshold)
            assert kept_naive == kept, "the index and the naive screen disagree"
            tail = f"{t_naive:9.2f} {t_naive / t_idx:8.1f}x"
        else:
            tail = f"{'-':>9} {'-':>9}"
        print(f"{n:12d} {kept:7d} {t_idx:9.2f} {exact:12d} {tail}")


if __name__ == "__main__":
    main()
