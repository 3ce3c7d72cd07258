"""The embedded SmolLM2-135M model, end to end (slow: conversion once, then seconds)."""

import re
import time

import pytest

from constitutional.backends.base import Sampling
from constitutional.config import ModelConfig
from constitutional.models import BUILTINS, is_ready, prepare_builtin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from constitutional.backends.transformers_backend import TransformersBackend
    prepare_builtin(BUILTINS["smollm2-135m"])
    return TransformersBackend.from_config(ModelConfig(name="smollm2-135m", batch_size=8))


def test_cached_conversion_is_reused():
    prepare_builtin(BUILTINS["smollm2-135m"])
    t0 = time.time()
    path = prepare_builtin(BUILTINS["smollm2-135m"])
    assert time.time() - t0 < 1.0 and is_ready(BUILTINS["smollm2-135m"])
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_embedded_model_answers(smol):
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Name a fruit that is yellow."}]]
    outs = smol.generate(prompts, Sampling(temperature=0.0, max_tokens=24))
    assert "Paris" in outs[0][0].text
    assert all(o[0].text.strip() and o[0].tokens > 0 for o in outs)


def test_embedded_model_scores_choices(smol):
    q = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    (paris, london), = smol.score_choices([q], [["Paris", "London"]])
    assert paris > london + 1.0


def test_embedded_scores_agree_with_plain_forward(smol):
    import torch
    raw = "Question: Is the sky blue on a clear day?\nAnswer (yes or no):"
    (yes, no), = smol.score_choices([raw], [[" yes", " no"]])
    ids = smol.encode(raw)
    impl = smol.model.config._attn_implementation
    smol.model.config._attn_implementation = "sdpa"
    try:
        with torch.inference_mode():
            logp = torch.log_softmax(smol.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    finally:
        smol.model.config._attn_implementation = impl
    ref_yes, ref_no = (logp[smol.encode(raw, o)[-1]].item() for o in (" yes", " no"))
    assert yes == pytest.approx(ref_yes, abs=0.15) and no == pytest.approx(ref_no, abs=0.15)
    assert yes - no == pytest.approx(ref_yes - ref_no, abs=0.05)


def test_embedded_mc_benchmark_from_the_cli(tmp_path):
    from conftest import run_cai

    r = run_cai(["eval", "mc", "bundled:mc_sample", "--model", "smollm2-135m"], tmp_path)
    assert r.returncode == 0, r.stderr
    acc = re.search(r"12 questions, accuracy ([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", r.stdout)
    assert acc, r.stdout
    lo, mid, hi = float(acc.group(2)), float(acc.group(1)), float(acc.group(3))
    assert 0.0 <= lo <= mid <= hi <= 1.0
