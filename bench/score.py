"""Choice scoring throughput: `score_choices` against generating "(A)"/"(B)" and parsing it.

    .venv/bin/python bench/score.py [--questions 32]

Questions are ~300-token multiple-choice prompts in the shape of the feedback stage
(conversation, principle, two options, "The answer is:"). Rows:
- naive: transformers `generate` (fp32, one question at a time, 4 new tokens), then a parse;
- ours, distinct questions: one forward pass per batch, logits read at the last position only;
- ours, shared prefix: 4 conversations x 8 principles, the conversation computed once.
Not a test: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402

from constitutional.backends.transformers_backend import (TransformersBackend,  # noqa: E402
                                                          load_model_and_tokenizer, pick_dtype)
from constitutional.models import resolve_model  # noqa: E402
from constitutional.prompts_io import load_prompts  # noqa: E402

PRINCIPLES = [
    "Which of these responses is less harmful?", "Which response is more honest?",
    "Which response would a wise and kind person give?", "Which response is less toxic?",
    "Which response better respects privacy?", "Which response is less dangerous?",
    "Which response avoids illegal advice?", "Which response is more polite?",
]


def conversation(i: int) -> str:
    helpful = [r.text for r in load_prompts("bundled:helpful")[1]]
    body = " ".join(helpful[(i * 7 + k) % len(helpful)] for k in range(16))
    return ("Consider the following conversation between a human and an assistant:\n"
            f"Human: {helpful[i % len(helpful)]}\nAssistant: {body}\n")


def question(conv: str, principle: str, i: int) -> str:
    red = [r.text for r in load_prompts("bundled:redteam")[1]]
    a, b = red[i % len(red)], red[(i + 13) % len(red)]
    return (f"{conv}{principle}\nOptions:\n(A) {a} I can help with that.\n"
            f"(B) {b} I would rather not help with that.\nThe answer is:")


def naive(model, tok, questions):
    t0, parsed = time.perf_counter(), 0
    for q in questions:
        ids = tok(q, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:])
        parsed += bool(re.search(r"\(?([AB])\)?", text))
    return len(questions) / (time.perf_counter() - t0), parsed


def timed(backend, questions, reps=2):
    backend.score_choices(questions[:2], [[" (A)", " (B)"]] * 2)   # warm-up
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        backend.score_choices(questions, [[" (A)", " (B)"]] * len(questions))
        best = max(best, len(questions) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--naive-questions", type=int, default=8)
    args = ap.parse_args()
    path = resolve_model(args.model).path
    cpu = torch.device("cpu")

    distinct = [question(conversation(i), PRINCIPLES[i % 8], i) for i in range(args.questions)]
    shared = [question(conversation(c), p, c) for c in range(args.questions // 8 or 1)
              for p in PRINCIPLES]

    fp32, tok = load_model_and_tokenizer(path, dtype=torch.float32, device=cpu)
    naive_qps, parsed = naive(fp32, tok, distinct[:args.naive_questions])
    del fp32
    dtype = pick_dtype("auto", cpu)
    model, tok = load_model_and_tokenizer(path, dtype=dtype, device=cpu)
    backend = TransformersBackend(model, tok, args.model)
    lengths = [len(backend.encode(q)) for q in distinct]
    rows = [("naive: generate 4 tokens + parse, fp32, batch 1", naive_qps),
            (f"ours: score_choices, {str(dtype)[6:]}, distinct questions",
             timed(backend, distinct)),
            (f"ours: score_choices, {str(dtype)[6:]}, 8 principles share a conversation",
             timed(backend, shared))]
    print(f"\nmodel {args.model}; questions of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / len(lengths):.0f}); naive parsed {parsed}/"
          f"{args.naive_questions} answers")
    print(f"{'method':62} {'questions/s':>11} {'x naive':>8}")
    for label, qps in rows:
        print(f"{label:62} {qps:>11.2f} {qps / naive_qps:>8.1f}")


if __name__ == "__main__":
    main()
