"""The in-process backend against each architecture's own transformers code (issue 19).

Tiny random-weight models built from configs here (no download), one per family the engine
claims and two it does not: greedy generation must give the tokens of the model's own
`generate`, and `score_choices` the log-probabilities of the model's own forward, batched with
padding, with and without a shared prefix. A model or a call the engine would compute wrongly
(a sliding window shorter than the sequence, soft-capping) must be routed to transformers'
own code with one line saying so, and the engine itself must refuse such a call.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tokenizer

from constitutional.backends import kv_engine, plain_engine
from constitutional.backends.base import ContextLengthError, Sampling
from constitutional.backends.transformers_backend import TransformersBackend

TOK = build_tokenizer()
COMMON = dict(vocab_size=len(TOK), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=1024, eos_token_id=TOK.eos_token_id,
              pad_token_id=TOK.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
WINDOW = 24          # the window of the test that passes it; the matrix's models have 512


def config(family: str, window: int = 512):
    import transformers as T

    layers = ["sliding_attention", "full_attention"]
    return {
        "llama": lambda: T.LlamaConfig(**COMMON),
        "qwen2": lambda: T.Qwen2Config(**COMMON),
        "qwen3": lambda: T.Qwen3Config(**COMMON),
        "mistral": lambda: T.MistralConfig(**COMMON, sliding_window=window),
        "phi3": lambda: T.Phi3Config(**COMMON),
        "smollm3": lambda: T.SmolLM3Config(**COMMON),
        "gemma3": lambda: T.Gemma3TextConfig(**COMMON, sliding_window=window,
                                             layer_types=layers),
        "gemma2": lambda: T.Gemma2Config(**COMMON, sliding_window=window, layer_types=layers),
    }[family]()


ENGINE = ["llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3", "gemma3"]


def backend(family: str, said: list, window: int = 512):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(family, window), dtype=torch.float32)
    with torch.no_grad():       # peaked distributions, so token choices are not near ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.eval()
    return TransformersBackend(model, TOK, family, log=said.append)


def reference_generate(b: TransformersBackend, prompt, max_tokens: int) -> list[int]:
    """The model's own greedy `generate` on one unpadded prompt, cut at the end token."""
    from transformers import GenerationConfig

    ids = torch.tensor([b.encode(prompt)])
    with plain_engine.native_attention(b.model, b.native), torch.inference_mode():
        out = b.model.generate(ids, generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=max_tokens, eos_token_id=sorted(b.eos_ids),
            pad_token_id=b.pad_id))[0, ids.shape[1]:].tolist()
    return out[:next((i for i, t in enumerate(out) if t in b.eos_ids), len(out))]


def reference_scores(b: TransformersBackend, prompt, options) -> list[float]:
    """Each option's log-probability from the model's own forward: the tokens after all
    options' shared prefix, before their shared end (the span that tells them apart)."""
    full = [b.encode(prompt, o) for o in options]
    shared = min(min(len(f) for f in full) - 1, min(
        next((i for i in range(min(len(a), len(full[0]))) if a[i] != full[0][i]),
             min(len(a), len(full[0]))) for a in full))
    tails = [f[shared:] for f in full]
    end = min(min(len(t) for t in tails) - 1, min(
        next((i for i in range(min(len(t), len(tails[0]))) if t[-1 - i] != tails[0][-1 - i]),
             min(len(t), len(tails[0]))) for t in tails))
    out = []
    with plain_engine.native_attention(b.model, b.native), torch.inference_mode():
        for f in full:
            logp = torch.log_softmax(b.model(torch.tensor([f])).logits[0].float(), -1)
            out.append(float(sum(logp[p - 1, f[p]] for p in range(shared, len(f) - end))))
    return out


def chats(n: int, prefix: str = ""):
    texts = ["Is the sky blue?", "Name a quick fox, please, now.", "Hi", "Tell me: what is 2+2?"]
    return [[{"role": "system", "content": prefix}] * bool(prefix) +
            [{"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]


LONG_SYSTEM = "You are a careful and kind assistant who answers briefly and well. " * 2


@pytest.mark.parametrize("family", ENGINE + ["gemma2"])
@pytest.mark.parametrize("shared", [False, True], ids=["no-prefix", "shared-prefix"])
def test_generation_and_scores_match_the_models_own_code(family, shared):
    said = []
    b = backend(family, said)
    prompts = chats(4, LONG_SYSTEM if shared else "")
    if shared:
        assert kv_engine._common_prefix([b.encode(p) for p in prompts]) >= \
            kv_engine.MIN_SHARED_DECODE_PREFIX
    new = 6
    got = b.generate(prompts, Sampling(temperature=0.0, max_tokens=new))
    for p, (c,) in zip(prompts, got):
        assert c.extra["token_ids"] == reference_generate(b, p, new), family
    options = [" (A)", " (B)", " (C)"]
    raw = [f"Question {i}: which one?\n{LONG_SYSTEM if shared else ''}Answer:" for i in range(3)]
    scores = b.score_choices(raw, [options] * 3)
    for p, s in zip(raw, scores):
        assert s == pytest.approx(reference_scores(b, p, options), abs=2e-4), family
    routed = [m for m in said if "transformers' own" in m]
    if family == "gemma2":
        assert len(routed) == 1 and "soft-capping" in routed[0]
    else:
        assert routed == [], (family, said)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_a_sequence_past_the_window_goes_to_transformers_and_the_engine_refuses_it(family):
    said = []
    b = backend(family, said, WINDOW)
    long_chat = [{"role": "user", "content": "Tell me a long story about a fox and a dog "
                  "that met by the river one day."}]
    assert len(b.encode(long_chat)) > WINDOW
    (c,), = b.generate([long_chat], Sampling(temperature=0.0, max_tokens=8))
    assert c.extra["token_ids"] == reference_generate(b, long_chat, 8)
    assert len([m for m in said if "attention window" in m]) == 1
    raw = "Question: " + "which of these is right, " * 4 + "A or B?\nAnswer:"
    s = b.score_choices([raw], [[" (A)", " (B)"]])[0]
    assert s == pytest.approx(reference_scores(b, raw, [" (A)", " (B)"]), abs=2e-4)
    # full attention in place of the window is refused, not computed
    with pytest.raises(kv_engine.EngineUnsupported, match="sliding window"):
        kv_engine.decode_batch(b.model, [kv_engine.DecodeRequest(b.encode(long_chat), 0)],
                               temperature=0.0, top_p=1.0, top_k=0, max_tokens=4,
                               eos_ids=b.eos_ids, pad_id=b.pad_id)


def test_sampled_rows_on_the_plain_path_do_not_depend_on_their_batch():
    b = backend("gemma2", [])
    prompts = chats(3)
    s = Sampling(temperature=1.0, max_tokens=6, seed=5)
    together = [c.text for (c,) in b.generate(prompts, s)]
    alone = [b.generate([p], s)[0][0].text for p in prompts]
    assert together == alone


def test_a_prompt_past_the_context_is_refused_and_batches_fit_the_memory_budget(monkeypatch):
    b = backend("llama", [])
    b.context = 40
    with pytest.raises(ContextLengthError) as e:
        b.generate(chats(2) + [[{"role": "user", "content": "word " * 40}]],
                   Sampling(temperature=0.0, max_tokens=4))
    assert e.value.index == 2 and "context of 40 tokens" in str(e.value)
    b.context = 1024
    prompts = chats(8)
    s = Sampling(temperature=0.0, max_tokens=5)
    whole = [c.text for (c,) in b.generate(prompts, s)]
    calls = []
    real = kv_engine.decode_batch
    monkeypatch.setattr(kv_engine, "decode_batch",
                        lambda model, reqs, **kw: calls.append(len(reqs)) or real(model, reqs,
                                                                                   **kw))
    per_row = b._kv_bytes_per_token() * (max(len(b.encode(p)) for p in prompts) + 5)
    monkeypatch.setenv("CAI_KV_BUDGET_GB", str(2.5 * per_row / 2**30))
    split = [c.text for (c,) in b.generate(prompts, s)]
    assert split == whole and len(calls) >= 3 and sum(calls) == 8 and max(calls) <= 3
