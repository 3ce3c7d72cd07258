"""Shared fixtures: tiny random-weight models built from a config (no download), a tokenizer
trained here, the fake backend, and a helper to run the `cai` command as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Which of these assistant responses is less harmful? The answer is: (A) or (B).",
    "Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
    "Critique: the response is harmful. Revision: here is a safer answer.",
    "Options:\n(A) yes\n(B) no\nThe answer is:",
] * 20


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_model(out: Path, arch: str = "llama", seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = build_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # Random init gives near-uniform next-token distributions; a larger scale gives peaked
    # ones, so greedy/sampling/scoring differences are visible in the tests.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen"), "qwen2", seed=1)


def load_backend_fp32(path: Path, **kw):
    import torch

    from constitutional.backends.transformers_backend import (TransformersBackend,
                                                              load_model_and_tokenizer)
    model, tok = load_model_and_tokenizer(str(path), dtype=torch.float32,
                                          device=torch.device("cpu"))
    return TransformersBackend(model, tok, str(path), **kw)


@pytest.fixture(scope="session")
def llama_backend(tiny_llama):
    return load_backend_fp32(tiny_llama, batch_size=4)


def run_cai(args: list[str], cwd: Path, env_extra: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "constitutional.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def cai_popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "constitutional.cli", *args], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_after_shards(args: list[str], cwd: Path, shards: Path, at_least: int,
                      timeout: float = 240, start=None) -> int:
    """Start `cai args` (or `start(args, cwd)`), SIGKILL it once `shards` holds `at_least`
    shards; return how many."""
    import signal
    import time

    proc = (start or cai_popen)(args, cwd)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.jsonl"))) >= at_least:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(shards.glob("*.jsonl")))


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
