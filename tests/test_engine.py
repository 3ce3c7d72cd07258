"""The transformers backend and its KV engine against plain transformers, on tiny models."""

from __future__ import annotations

import pytest
import torch

from constitutional.backends import kv_engine
from constitutional.backends.base import Sampling
from constitutional.backends.transformers_backend import _lcp
from conftest import load_backend_fp32

PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Which of these assistant responses is less harmful? "
                                 "Explain the answer with care and at some length please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say yes."}],
    "Human: a raw text prompt\n\nAssistant:",
]


def hf_greedy(backend, prompt, max_new):
    """Reference: transformers' own generate, one prompt at a time, stock attention."""
    model = backend.model
    ids = torch.tensor([backend.encode(prompt)])
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    try:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new, eos_token_id=sorted(backend.eos_ids),
                                 pad_token_id=backend.pad_id)
    finally:
        model.config._attn_implementation = impl
    new = out[0, ids.shape[1]:].tolist()
    return [t for t in new if t not in backend.eos_ids]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen"])
def test_batched_greedy_equals_transformers_generate(arch, request):
    backend = load_backend_fp32(request.getfixturevalue(arch), batch_size=3)
    # 40 tokens crosses several cache growths; prompts of different lengths test left padding.
    outs = backend.generate(PROMPTS, Sampling(temperature=0.0, max_tokens=40))
    for prompt, (c,) in zip(PROMPTS, outs):
        ref = hf_greedy(backend, prompt, 40)
        assert c.text == backend.tokenizer.decode(ref, skip_special_tokens=True)
        assert c.tokens == len(ref)


def test_shared_prefix_prefill_matches_transformers_generate(llama_backend, monkeypatch):
    """Few-shot prompts share a long prefix, prefilled once and broadcast to the batch."""
    shots = [{"role": "user", "content": "An example question about cooking rice well?"},
             {"role": "assistant", "content": "Rinse it, then simmer it covered for twenty "
                                              "minutes and let it rest."}]
    prompts = [shots + [{"role": "user", "content": q}] for q in
               ("How do I bake bread?", "Say yes.", "What is a good name for a small cat?")]
    ids = [llama_backend.encode(p) for p in prompts]
    assert min(_lcp(ids[0], x) for x in ids[1:]) >= kv_engine.MIN_SHARED_DECODE_PREFIX
    used = []
    real = kv_engine.prefill_prefix
    monkeypatch.setattr(kv_engine, "prefill_prefix", lambda m, ids: used.append(len(ids))
                        or real(m, ids))
    outs = llama_backend.generate(prompts, Sampling(temperature=0.0, max_tokens=24))
    assert used and used[0] >= kv_engine.MIN_SHARED_DECODE_PREFIX
    for prompt, (c,) in zip(prompts, outs):
        assert c.text == llama_backend.tokenizer.decode(hf_greedy(llama_backend, prompt, 24),
                                                        skip_special_tokens=True)


def test_sampling_is_seeded_and_independent_of_batch(llama_backend):
    s = Sampling(n=2, temperature=1.0, top_p=0.9, max_tokens=24, seed=7)
    all_out = llama_backend.generate(PROMPTS, s)
    alone = llama_backend.generate([PROMPTS[1]], s)
    assert [c.text for c in alone[0]] == [c.text for c in all_out[1]]
    again = llama_backend.generate(PROMPTS, s)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in all_out]
    other_seed = llama_backend.generate(PROMPTS, Sampling(**{**s.__dict__, "seed": 8}))
    assert [[c.text for c in cs] for cs in other_seed] != [[c.text for c in cs] for cs in all_out]
    # two samples of the same prompt draw from different streams
    assert any(cs[0].text != cs[1].text for cs in all_out)


def test_stop_strings_cut_the_completion(llama_backend):
    free = llama_backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=30))[0][0]
    assert len(free.text) > 6
    stop = free.text[4:6]
    cut = llama_backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=30,
                                                       stop=(stop,)))[0][0]
    assert cut.text == free.text[:free.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.tokens < free.tokens or free.finish_reason == "stop"


def test_length_finish_reason(llama_backend):
    c = llama_backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=3))[0][0]
    assert c.finish_reason in ("length", "stop") and c.tokens <= 3


def plain_forward_scores(be, prompts, options) -> list[list[float]]:
    """Reference for score_choices: each prompt + option through a plain forward (stock SDPA
    attention), summing the log-probs of the option's own tokens."""
    impl = be.model.config._attn_implementation
    be.model.config._attn_implementation = "sdpa"
    out = []
    try:
        for p in prompts:
            fulls = [be.encode(p, o) for o in options]
            shared = min(_lcp(fulls[0], f) for f in fulls)
            row = []
            for f in fulls:
                with torch.inference_mode():
                    logp = torch.log_softmax(be.model(torch.tensor([f])).logits[0].float(), -1)
                row.append(sum(logp[t - 1, f[t]].item() for t in range(shared, len(f))))
            out.append(row)
    finally:
        be.model.config._attn_implementation = impl
    return out


def test_score_choices_equals_plain_forward(llama_backend):
    options = [" (A)", " (B)", " maybe not"]
    prompts = [PROMPTS[0], PROMPTS[3]]
    got = llama_backend.score_choices(prompts, [options] * 2)
    for row, ref in zip(got, plain_forward_scores(llama_backend, prompts, options)):
        assert row == pytest.approx(ref, abs=1e-4)


def test_letter_options_read_one_next_token_distribution(llama_backend):
    be = llama_backend
    prompt = "Options:\n(A) yes\n(B) no\nThe answer is:"
    (a, b), = be.score_choices([prompt], [[" (A)", " (B)"]])
    fa, fb = be.encode(prompt, " (A)"), be.encode(prompt, " (B)")
    shared = _lcp(fa, fb)
    assert fa[shared + 1:] == fb[shared + 1:] and len(fa) > shared + 1  # ")" is shared
    be.model.config._attn_implementation = "sdpa"
    try:
        with torch.inference_mode():
            logp = torch.log_softmax(be.model(torch.tensor([fa[:shared]])).logits[0, -1], -1)
    finally:
        be.model.config._attn_implementation = kv_engine.ATTN_NAME
    assert (a, b) == pytest.approx((logp[fa[shared]].item(), logp[fb[shared]].item()), abs=1e-4)


def test_shared_prefix_scoring_matches_unshared(llama_backend, monkeypatch):
    be = llama_backend
    context = "Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast. " * 3
    principles = ["Which is less harmful?", "Which is more honest?", "Which is kinder?",
                  "Which would a wise person say?"]
    prompts = [f"{context}\n{p}\nOptions:\n(A) yes\n(B) no\nThe answer is:" for p in principles]
    options = [[" (A)", " (B)"]] * len(prompts)
    shared = be.score_choices(prompts, options)
    from constitutional.backends import transformers_backend as tb
    monkeypatch.setattr(tb, "MIN_SHARED_PREFIX", 10_000)   # forces the no-sharing path
    unshared = be.score_choices(prompts, options)
    for a, b in zip(shared, unshared):
        assert a == pytest.approx(b, abs=1e-4)
    # the options differ, and the choice is not a constant
    assert any(abs(a[0] - a[1]) > 1e-3 for a in shared)


def test_prefix_groups_are_used(llama_backend, monkeypatch):
    calls = []
    real = kv_engine.prefill_prefix
    monkeypatch.setattr(kv_engine, "prefill_prefix",
                        lambda m, p: calls.append(len(p)) or real(m, p))
    ctx = "The quick brown fox jumps over the lazy dog. " * 4
    llama_backend.score_choices([ctx + "A?", ctx + "B?", "short"], [[" (A)", " (B)"]] * 3)
    assert len(calls) == 1 and calls[0] >= 16


def test_prefix_groups_split_at_each_conversation_not_the_common_head(llama_backend,
                                                                      monkeypatch):
    """Questions of two pairs: every row starts with the same head, but each pair's rows share
    far more (their conversation and answers). One prefix pass per pair, not one group whose
    prefix is the head alone (too short to pay, so nothing would be shared)."""
    calls = []
    real = kv_engine.prefill_prefix
    monkeypatch.setattr(kv_engine, "prefill_prefix",
                        lambda m, p: calls.append(len(p)) or real(m, p))
    head = "Consider the following conversation between a human and an assistant:\n"
    convs = ["Human: How do I bake bread? " * 8, "Human: Which fox is quick and brown? " * 8]
    prompts = [f"{head}{c}\nOptions:\n(A) yes\n(B) no\n{p}\nThe answer is:" for c in convs
               for p in ("Which is less harmful?", "Which is more honest?", "Which is kinder?")]
    scores = llama_backend.score_choices(prompts, [[" (A)", " (B)"]] * len(prompts))
    head_len = len(llama_backend.encode(head, ""))
    assert len(calls) == 2 and min(calls) > 2 * head_len
    monkeypatch.setattr(transformers_backend_module(), "MIN_SHARED_PREFIX", 10_000)
    for a, b in zip(scores, llama_backend.score_choices(prompts, [[" (A)", " (B)"]] * 6)):
        assert a == pytest.approx(b, abs=1e-4)


def transformers_backend_module():
    from constitutional.backends import transformers_backend

    return transformers_backend


def test_sample_tokens_math():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # greedy
    assert kv_engine.sample_tokens(logits, 0.0, 1.0, 0, torch.tensor([0.9])).item() == 0
    # inverse CDF over the full distribution: u in [0, .5) -> 0, [.5, .8) -> 1, ...
    picks = [kv_engine.sample_tokens(logits, 1.0, 1.0, 0, torch.tensor([u])).item()
             for u in (0.1, 0.49, 0.51, 0.79, 0.81, 0.96)]
    assert picks == [0, 0, 1, 1, 2, 3]
    # top_p=0.6 keeps {0, 1} (0.5 < 0.6), renormalized to 0.625/0.375
    picks = [kv_engine.sample_tokens(logits, 1.0, 0.6, 0, torch.tensor([u])).item()
             for u in (0.6, 0.62, 0.63, 0.99)]
    assert picks == [0, 0, 1, 1]
    # top_k=1 is greedy whatever the uniform
    assert kv_engine.sample_tokens(logits, 1.0, 1.0, 1, torch.tensor([0.99])).item() == 0


def test_sample_tokens_top_p_wide_nucleus_is_exact():
    # A flat distribution over 5000 tokens: the nucleus does not fit in the top 512.
    V = 5000
    logits = torch.zeros(1, V)
    tok = kv_engine.sample_tokens(logits, 1.0, 0.95, 0, torch.tensor([0.999]))
    probs = torch.softmax(logits, -1)
    vals, idx = probs.sort(descending=True)
    kept = int(((vals.cumsum(-1) - vals) < 0.95).sum())
    assert tok.item() in set(idx[0, :kept].tolist())


def _nucleus_reference(probs: torch.Tensor, top_p: float, u: float) -> int:
    """One row, the whole vocabulary sorted: the smallest top set reaching top_p."""
    vals, idx = probs.sort(descending=True)
    kept = torch.where(vals.cumsum(-1) - vals < top_p, vals, torch.zeros_like(vals))
    cum = kept.cumsum(-1)
    pick = int(torch.searchsorted(cum, torch.tensor([u * cum[-1].item()])))
    return int(idx[min(pick, len(idx) - 1)])


def test_sample_tokens_rows_widen_alone_and_stay_exact():
    # Rows from peaked (nucleus in the top 64) to flat (nucleus beyond 4096 tokens): each row
    # gets exactly the token a full sort of that row alone gives, whatever its batch mates.
    # (fp32 logits: no ties, so candidate order is the same in topk and sort.)
    torch.manual_seed(0)
    scales = torch.tensor([16.0, 8.0, 4.0, 2.0, 1.0, 0.05])
    logits = torch.randn(len(scales), 6000) * scales[:, None]
    probs = torch.softmax(logits, -1)
    sizes = [int(((p.sort(descending=True).values.cumsum(-1)) < 0.95).sum()) + 1 for p in probs]
    assert min(sizes) <= 64 and any(64 < n <= 512 for n in sizes) and max(sizes) > 4096
    for u in torch.linspace(0.0, 0.999, 23):
        uniforms = torch.full((len(scales),), float(u))
        got = kv_engine.sample_tokens(logits, 1.0, 0.95, 0, uniforms).tolist()
        ref = [_nucleus_reference(p, 0.95, float(u)) for p in probs]
        assert got == ref


def test_greedy_tokens_take_the_first_maximum():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 0.0, 5.0]], dtype=torch.bfloat16)
    assert kv_engine.greedy_tokens(logits).tolist() == [1, 0]


def test_cache_growth_select_and_views():
    cache = kv_engine.KVCache(1)
    cache.reserve(3)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    keys, values = cache.update(k, k + 100, 0)
    assert torch.equal(keys, k) and torch.equal(values, k + 100)   # only the filled part
    cache.length = 3
    before = cache.capacity
    cache.reserve(before + 1)
    assert cache.capacity > before and cache.k[0].shape[2] == cache.capacity
    assert torch.equal(cache.k[0][:, :, :3], k) and torch.equal(cache.v[0][:, :, :3], k + 100)
    new = torch.full((2, 1, 1, 2), -1.0)
    keys, _ = cache.update(new, new, 0)
    assert keys.shape == (2, 1, 4, 2) and torch.equal(keys[:, :, 3:], new)
    cache.length = 4
    cache.select(torch.tensor([1]))
    assert cache.k[0].shape == (1, 1, cache.capacity, 2)
    assert torch.equal(cache.k[0][0, :, :3], k[1]) and torch.equal(cache.k[0][0, :, 3:4], new[1])


def test_broadcast_keeps_the_filled_part_and_its_valid_mask():
    ka = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    one = kv_engine.KVCache(1)
    one.reserve(5)
    one.update(ka, ka, 0)
    one.length, one.valid = 3, torch.tensor([[False, True, True]])
    wide = one.broadcast(4, 20)
    assert wide.capacity == 32 and wide.k[0].shape == (4, 2, 32, 4)
    assert wide.valid.tolist() == [[False, True, True]] * 4
    assert all(torch.equal(wide.k[0][r, :, :3], ka[0]) for r in range(4))


def test_engine_attention_keeps_plain_transformers_generate_correct(tiny_llama):
    """A model routed through the engine's attention still works with HF's own generate
    (no mask, a cache in front): same tokens as the stock attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import load_backend_fp32

    patched = load_backend_fp32(tiny_llama).model
    stock = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 9, 33, 7]])
    kw = dict(do_sample=False, max_new_tokens=8, attention_mask=torch.ones_like(ids),
              pad_token_id=0)
    with torch.inference_mode():
        assert patched.generate(ids, **kw).tolist() == stock.generate(ids, **kw).tolist()


def _reference_attention(q, k, v, allowed):
    """Grouped-query attention the slow way: K/V repeated per head, fp64."""
    G = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(G, dim=1) for t in (k, v))
    scores = (q.double() @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)      # [B, q, H, d]


@pytest.mark.parametrize("mask_kind", ["additive", "boolean"])
def test_decode_attention_paths_match_reference(mask_kind):
    """One new token per row: the fp32 path (two batched matmuls) and the bf16 path (SDPA)
    both compute grouped-query attention over padded rows."""
    torch.manual_seed(0)
    B, H, Hkv, T, d = 5, 6, 2, 19, 16
    q, k, v = torch.randn(B, H, 1, d), torch.randn(B, Hkv, T, d), torch.randn(B, Hkv, T, d)
    allowed = torch.ones(B, 1, 1, T, dtype=torch.bool)
    allowed[1, ..., :7] = False                           # left padding of one row
    allowed[3, ..., 4:9] = False
    ref = _reference_attention(q, k, v, allowed)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        mask = allowed if mask_kind == "boolean" else \
            torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
        out, _ = kv_engine._attention(None, q.to(dtype), k.to(dtype), v.to(dtype), mask)
        assert out.shape == (B, 1, H, d)
        assert torch.allclose(out.double(), ref, atol=tol), dtype


def test_packed_linears_match_plain_and_follow_weight_updates(tiny_llama):
    from constitutional.backends import cpu_runtime
    from constitutional.backends.transformers_backend import load_model_and_tokenizer
    if not cpu_runtime.supported():
        pytest.skip("this torch build has no oneDNN linear ops")
    model, _ = load_model_and_tokenizer(str(tiny_llama), dtype=torch.bfloat16,
                                        device=torch.device("cpu"))
    ids = torch.tensor([[5, 17, 42, 9, 33, 7, 2, 8]])
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with torch.inference_mode():
        plain = model(ids).logits
        with cpu_runtime.packed_linears(model):
            assert all("forward" in m.__dict__ for m in linears)
            with cpu_runtime.packed_linears(model):        # nested: the outer routing stays
                pass
            assert all("forward" in m.__dict__ for m in linears)
            packed = model(ids).logits
    assert not any("forward" in m.__dict__ for m in linears)
    assert torch.allclose(packed.float(), plain.float(), atol=1e-2)
    # An optimizer-style in-place update: the next packed use repacks instead of reusing.
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    with torch.inference_mode():
        updated = model(ids).logits
        with cpu_runtime.packed_linears(model):
            packed_after = model(ids).logits
    assert torch.allclose(packed_after.float(), updated.float(), atol=1e-2)
    assert not torch.allclose(updated.float(), plain.float(), atol=1e-2)


def test_bf16_engine_scores_match_plain_bf16_forward(tiny_llama):
    """The bf16 fast path (packed linears, SDPA) reads the same log-probs as
    a plain bf16 forward, to bf16 precision."""
    from constitutional.backends.transformers_backend import (TransformersBackend,
                                                              load_model_and_tokenizer)
    model, tok = load_model_and_tokenizer(str(tiny_llama), dtype=torch.bfloat16,
                                          device=torch.device("cpu"))
    be = TransformersBackend(model, tok, "tiny-bf16")
    options = [" (A)", " (B)", " maybe not"]
    got = be.score_choices(PROMPTS[:2], [options] * 2)
    for row, ref in zip(got, plain_forward_scores(be, PROMPTS[:2], options)):
        for value, r in zip(row, ref):
            assert value == pytest.approx(r, abs=0.05 + 0.01 * abs(r))


def test_bf16_greedy_decode_follows_plain_bf16_forward(tiny_llama):
    """Greedy decoding on the bf16 fast path (packed linears, SDPA over cache views, left
    padding): every token it picks is, under a plain bf16 forward of the whole sequence, the
    most likely one up to bf16 rounding."""
    from constitutional.backends.transformers_backend import (TransformersBackend,
                                                              load_model_and_tokenizer)
    model, tok = load_model_and_tokenizer(str(tiny_llama), dtype=torch.bfloat16,
                                          device=torch.device("cpu"))
    be = TransformersBackend(model, tok, "tiny-bf16", batch_size=4)
    outs = be.generate(PROMPTS, Sampling(temperature=0.0, max_tokens=24))
    model.config._attn_implementation = "sdpa"
    gaps = []
    for prompt, (c,) in zip(PROMPTS, outs):
        ids = be.encode(prompt)
        new = c.extra["token_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor([ids + new])).logits[0].float()
        for i, t in enumerate(new):
            row = logits[len(ids) + i - 1]
            gaps.append(float(row.max() - row[t]))
    assert len(gaps) > 40
    assert max(gaps) < 0.15, sorted(gaps)[-5:]


def _in_one_row_passes(monkeypatch, spied: str, run):
    """(run()'s result, the positional arguments of every call of kv_engine.<spied>) with
    each prefill and scoring pass one row wide (as the 1.5B model's are at a many-row width),
    so stacking and per-pass scoring are exercised on a tiny model."""
    calls, real = [], getattr(kv_engine, spied)
    with monkeypatch.context() as m:
        m.setattr(kv_engine, "PASS_BYTES", 1)
        m.setattr(kv_engine, spied, lambda *a, **k: calls.append(a) or real(*a, **k))
        return run(), calls


@pytest.mark.parametrize("shared", [False, True])
def test_prefill_in_passes_of_one_row_decodes_the_same_tokens(llama_backend, monkeypatch,
                                                               shared):
    shots = [{"role": "user", "content": "An example question about cooking rice well?"},
             {"role": "assistant", "content": "Rinse it, then simmer it covered for twenty "
                                              "minutes and let it rest."}]
    prompts = [shots + p if shared and isinstance(p, list) else p for p in PROMPTS]
    if shared:
        prompts = [p for p in prompts if isinstance(p, list)]
    for s in (Sampling(temperature=0.0, max_tokens=24),
              Sampling(n=2, temperature=1.0, top_p=0.9, max_tokens=24, seed=3)):
        whole = llama_backend.generate(prompts, s)
        split, calls = _in_one_row_passes(monkeypatch, "_forward_new_tokens",
                                          lambda: llama_backend.generate(prompts, s))
        # one prefill pass per row of a batch (batch_size 4), then one-row-wide decode steps
        prefill = [a[2].shape for a in calls if a[2].shape[1] > 1]
        assert prefill and all(p[0] == 1 for p in prefill)
        assert [[c.text for c in cs] for cs in split] == [[c.text for c in cs] for cs in whole]
        assert [[c.tokens for c in cs] for cs in split] == \
            [[c.tokens for c in cs] for cs in whole]


def test_scoring_in_passes_of_one_row_matches_one_pass(llama_backend, monkeypatch):
    ctx = "Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast. " * 3
    prompts = [f"{ctx}\n{q}\nOptions:\n(A) yes\n(B) no\nThe answer is:"
               for q in ("Which is less harmful?", "Which is more honest?", "Kinder?")]
    prompts += ["short one", "a slightly longer prompt of its own, not shared"]
    options = [[" (A)", " (B)"]] * 3 + [[" yes", " no", " maybe so"]] * 2
    whole = llama_backend.score_choices(prompts, options)
    split, calls = _in_one_row_passes(monkeypatch, "_score_rows_causal",
                                      lambda: llama_backend.score_choices(prompts, options))
    assert calls and {len(a[1]) for a in calls} == {1}    # unshared rows went one at a time
    for a, b in zip(split, whole):
        assert a == pytest.approx(b, abs=1e-4)


def test_rows_per_pass_keeps_the_widest_activation_within_budget(tiny_llama, monkeypatch):
    be = load_backend_fp32(tiny_llama)
    c = be.model.config
    monkeypatch.setattr(kv_engine, "PASS_BYTES", 10 * 50 * c.intermediate_size * 4)
    # 50 new tokens a row attending to 20 keys: the MLP's activation (intermediate_size fp32
    # values a token) is the widest, and 10 rows fill the budget
    assert c.intermediate_size > c.num_attention_heads * 20
    assert kv_engine.rows_per_pass(be.model, 50, 20) == 10
    # attending to a long cache: attention's fp32 scores (heads x keys a token) are 5x the
    # MLP's, so 10 // 5 rows
    keys = 5 * c.intermediate_size // c.num_attention_heads
    assert kv_engine.rows_per_pass(be.model, 50, keys) == 2
    assert kv_engine.rows_per_pass(be.model, 10 ** 9, 10 ** 9) == 1   # never zero rows


def test_stack_aligns_each_part_to_the_end_and_zeroes_the_padding():
    def part(rows, length, base):
        c = kv_engine.KVCache(1)
        c.reserve(length)
        k = base + torch.arange(rows * 2 * length * 3, dtype=torch.float32).view(rows, 2, length, 3)
        c.update(k, -k, 0)
        c.length, c.valid = length, torch.ones(rows, length, dtype=torch.bool)
        c.valid[:, 0] = False                    # each part's own left padding is kept
        return c, k
    (a, ka), (b, kb) = part(2, 5, 0.0), part(1, 3, 1000.0)
    s = kv_engine.KVCache.stack([a, b])
    assert s.length == 5 and s.capacity == 16 and s.k[0].shape == (3, 2, 16, 3)
    assert torch.equal(s.k[0][:2, :, :5], ka) and torch.equal(s.v[0][:2, :, :5], -ka)
    assert torch.equal(s.k[0][2:, :, 2:5], kb) and torch.equal(s.v[0][2:, :, 2:5], -kb)
    assert not s.k[0][2:, :, :2].any() and not s.v[0][2:, :, :2].any()
    assert s.valid.tolist() == [[False, True, True, True, True]] * 2 + \
        [[False, False, False, True, True]]
