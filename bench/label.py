"""Labeling speed: `cai label` (one forward pass per question) against generate-and-parse.

Same model (embedded SmolLM2-135M-Instruct), same questions, same run. Ours: K principles x
both orders per pair, all questions of a chunk in one `score_choices` call (the shared
header and conversation computed once per group). The baselines ask the same questions,
generate a short answer for each (greedy) and parse the first "A" or "B" out of the text: one
question at a time through transformers' `generate`, as hand-rolled RLAIF scripts do, and
batched through our own engine (the strongest generate-and-parse we have).

Pairs: --data FILE (any comparison file, e.g. ../shared/data/hhh_dev.jsonl) or, by default,
the bundled red-team prompts with the default constitution's exemplar answers.

    .venv/bin/python bench/label.py [--pairs 32] [--principles 8] [--baseline-questions 64]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def default_pairs(n: int):
    from constitutional.comparisons import Comparison
    from constitutional.constitution import load_constitution
    from constitutional.prompts_io import load_prompts

    _, c = load_constitution("bundled:harmless")
    answers = [(ex.conversation[-1].content, ex.revision) for ex in c.exemplars.critique_revision]
    _, rows = load_prompts("bundled:redteam", n)
    return [Comparison(r.id, (("user", r.text),), *answers[i % len(answers)])
            for i, r in enumerate(rows)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--principles", type=int, default=8)
    ap.add_argument("--baseline-questions", type=int, default=64)
    ap.add_argument("--baseline-tokens", type=int, default=16)
    ap.add_argument("--loop-questions", type=int, default=16)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()

    from constitutional.backends import load_backend
    from constitutional.backends.base import Sampling
    from constitutional.comparisons import load_comparisons
    from constitutional.config import ModelConfig
    from constitutional.constitution import load_constitution
    from constitutional.labeling import LabelConfig, Labeler

    pairs = load_comparisons(a.data)[0][:a.pairs] if a.data else default_pairs(a.pairs)
    _, constitution = load_constitution("bundled:harmless")
    backend = load_backend(ModelConfig(), log=lambda m: None)
    cfg = LabelConfig(principles=a.principles, debias=True)
    labeler = Labeler(cfg, constitution)
    labeler.label(backend, pairs[:2])                                    # warm-up

    t0 = time.perf_counter()
    rows = []
    for i in range(0, len(pairs), cfg.chunk_size):
        rows += labeler.label(backend, pairs[i:i + cfg.chunk_size])
    ours_s = time.perf_counter() - t0
    n_q = sum(len(r["votes"]) for r in rows)

    baselines = []
    for fmt in ("text", "chat"):      # the chat template makes an instruct model answer more
        lab = Labeler(cfg.model_copy(update={"prompt_format": fmt}), constitution)
        questions = [lab.prompt(q) for p in pairs for _, _, q in lab.questions(p)]
        questions = questions[:a.baseline_questions]
        t0 = time.perf_counter()
        outs = backend.generate(questions, Sampling(temperature=0.0,
                                                    max_tokens=a.baseline_tokens))
        secs = time.perf_counter() - t0
        ok = sum(re.search(r"\b([AB])\b", o[0].text) is not None for o in outs)
        baselines.append((f"{fmt} layout, batched (our engine)", len(questions), secs, ok))

    # What a hand-rolled script does: one question at a time through transformers' generate.
    import torch

    lab = Labeler(cfg.model_copy(update={"prompt_format": "chat"}), constitution)
    questions = [lab.prompt(q) for p in pairs for _, _, q in lab.questions(p)][:a.loop_questions]
    tok, model = backend.tokenizer, backend.model
    t0 = time.perf_counter()
    ok = 0
    with torch.inference_mode():
        for q in questions:
            ids = torch.tensor([backend.encode(q)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=a.baseline_tokens, pad_token_id=backend.pad_id)
            ok += re.search(r"\b([AB])\b", tok.decode(out[0, ids.shape[1]:])) is not None
    baselines.insert(0, ("chat layout, one question at a time (transformers generate)",
                         len(questions), time.perf_counter() - t0, ok))

    ours_qps = n_q / ours_s
    base_qps = baselines[0][1] / baselines[0][2]
    base_labels = baselines[0][3] / baselines[0][2]
    print(f"\nfeedback labels, {len(pairs)} pairs x {a.principles} principles x 2 orders, "
          f"embedded model, {backend.model.dtype}\n")
    print("| labeler | questions | seconds | questions/s | labels/s (parsed) | speed-up "
          "vs one-at-a-time (questions/s, labels/s) |")
    print("|---|---|---|---|---|---|")
    for fmt, n, secs, ok in baselines:
        print(f"| generate {a.baseline_tokens} tokens and parse A/B, {fmt} "
              f"| {n} | {secs:.1f} | {n / secs:.2f} | {ok / secs:.2f} ({ok} of {n}) | "
              f"{(n / secs) / base_qps:.2f}x |")
    print(f"| ours: option log-probs, one forward pass | {n_q} | {ours_s:.1f} | "
          f"{ours_qps:.2f} | {ours_qps:.2f} (all) | {ours_qps / base_qps:.1f}x, "
          f"{ours_qps / max(base_labels, 1e-9):.0f}x |")


if __name__ == "__main__":
    main()
