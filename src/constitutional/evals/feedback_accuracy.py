"""`cai eval feedback-accuracy`: how often AI feedback agrees with human labels.

Each labeling method (plain, ensemble, debiased, ensemble + debiased, chain of thought, or
`config`: the label config exactly as given) labels
the same human-labelled pairs with the same feedback model, loaded once. Half the pairs (a
fixed coin per pair) show the human-preferred answer as (A) and half as (B), so a model that
always says "A" scores 50%, not its position bias. Reported per method: accuracy with a
bootstrap 95% interval, how often the two orders disagree, how often the model picks (A), and
the expected calibration error of its confidence.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from constitutional.comparisons import Comparison
from constitutional.evals.metrics import bootstrap_ci, expected_calibration_error, pick_score
from constitutional.labeling import LabelConfig, Labeler, pair_seed_flip

# Method name -> how it differs from the base label config.
METHODS: dict[str, dict] = {
    "plain": {"principles": 1, "debias": False, "cot": False},
    "ensemble": {"principles": 8, "debias": False, "cot": False},
    "debiased": {"principles": 1, "debias": True, "cot": False},
    "ensemble+debiased": {"principles": 8, "debias": True, "cot": False},
    "cot": {"principles": 1, "debias": True, "cot": True},
    "config": {},                 # the label config as given (--config, key=value overrides)
}


def shown(pairs: list[Comparison], seed: int = 0) -> list[Comparison]:
    """Flip half the pairs so the human-preferred answer is (B) there."""
    out = []
    for c in pairs:
        if pair_seed_flip(c.id, seed):
            c = replace(c, a=c.b, b=c.a, better=1 - (c.better or 0))
        out.append(c)
    return out


def summarize(rows: list[dict], seconds: float) -> dict:
    p_better = [r["label"] if r["human_better"] == "a" else 1.0 - r["label"] for r in rows]
    scores = [pick_score(p) for p in p_better]
    dis = [r["disagree"] for r in rows if r["disagree"] is not None]
    picks_a = [(v["p_first"] if v["order"] == "ab" else 1.0 - v["p_first"]) > 0.5
               for r in rows for v in r["votes"]]
    lo, hi = bootstrap_ci(scores)
    return {"n": len(rows), "accuracy": sum(scores) / len(scores), "ci95": [lo, hi],
            "order_disagreement": sum(dis) / len(dis) if dis else None,
            "picks_A": sum(picks_a) / len(picks_a), "ece": expected_calibration_error(p_better),
            "seconds": seconds, "pairs_per_s": len(rows) / seconds if seconds > 0 else None}


def evaluate(backend, pairs: list[Comparison], base: LabelConfig, constitution,
             methods: list[str], log: Callable[[str], None] = print,
             rows_out: Path | None = None) -> dict[str, dict]:
    from constitutional.jsonio import write_jsonl_atomic

    pairs = shown([c for c in pairs if c.better is not None])
    results = {}
    for name in methods:
        cfg = base.model_copy(update=METHODS[name])
        labeler = Labeler(cfg, constitution)
        t0 = time.time()
        rows = []
        for i in range(0, len(pairs), cfg.chunk_size):
            rows += labeler.label(backend, pairs[i:i + cfg.chunk_size])
        results[name] = summarize(rows, time.time() - t0)
        log(f"{name}: accuracy {results[name]['accuracy']:.3f} "
            f"({results[name]['seconds']:.1f}s)")
        if rows_out:
            write_jsonl_atomic(rows_out / f"{name.replace('+', '_')}.jsonl", rows)
    return results
