"""The default backend: any Hugging Face causal LM, in process, through `kv_engine`.

Loads once per run from safetensors (`trust_remote_code` off unless asked), renders chats with
the model's chat template, sorts work by length into batches, and for choice scoring groups
questions that share a prefix so the prefix is computed once. A model or a call the engine
would not compute exactly goes to transformers' own code instead (plain_engine.py), with one
line saying why. A prompt that with its new tokens passes the model's context is refused
(`ContextLengthError`, naming its place in the call), and a generate batch is split so that
its KV cache fits the memory budget (`CAI_KV_BUDGET_GB`, default a quarter of the free memory).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from constitutional.backends import kv_engine, plain_engine
from constitutional.backends.cpu_runtime import keep_freed_memory
from constitutional.backends.base import (Completion, ContextLengthError, Progress, Prompt,
                                          Sampling, cut_at_stop, option_span, prompt_key,
                                          sample_seed)
from constitutional.errors import InputError
from constitutional.models import resolve_model

MIN_SHARED_PREFIX = 16   # tokens a group of questions must share before a prefix pass pays
# The prefix path needs an explicit attention mask (~25% slower per token than plain causal
# attention), so it pays only when the shared part is a good share of each question.
MIN_SHARED_FRACTION = 0.35


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU if there is one. `auto` and a bare `cuda` mean this process's own GPU
    under a launcher (LOCAL_RANK), so that 8 processes do not all load onto GPU 0."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def load_model_and_tokenizer(path: str, *, dtype: torch.dtype, device: torch.device,
                             trust_remote_code: bool = False, revision: str | None = None,
                             name: str | None = None, model_class=None, **model_kw):
    """A model (a causal LM unless `model_class` says otherwise) from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from constitutional.models import adapter_base

    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    base = adapter_base(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        model = (model_class or AutoModelForCausalLM).from_pretrained(
            str(base or path), dtype=dtype, use_safetensors=True, **kw, **model_kw)
        if base is not None:            # a LoRA snapshot: merge it into its base once
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not load model '{name or path}': {first}") from None
    model.to(device).eval()
    if device.type == "cpu":
        keep_freed_memory()
    return model, tok


class TransformersBackend:
    def __init__(self, model, tokenizer, name: str, batch_size: int = 64,
                 score_batch_tokens: int = 1536, log=print):
        _check_supported(model.config, name)
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.score_batch_tokens = batch_size, score_batch_tokens
        cfg = model.config
        self.native = "eager" if getattr(cfg, "attn_logit_softcapping", None) else \
            (cfg._attn_implementation if cfg._attn_implementation != kv_engine.ATTN_NAME
             else "sdpa")
        self.plain = plain_engine.always_plain(cfg)
        self.window = plain_engine.attention_window(cfg)
        self.context = plain_engine.context_length(cfg)
        self.log = log
        self._said: set[str] = set()
        if self.plain:
            self._say(f"{name}: {self.plain}: the in-process engine would not compute it "
                      "exactly, so transformers' own generate and forward run it (slower)")
        kv_engine.use_engine_attention(model)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            (min(self.eos_ids) if self.eos_ids else 0)

    @classmethod
    def from_config(cls, cfg, log=print) -> "TransformersBackend":
        resolved = resolve_model(cfg.name, log=log)
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        model, tok = load_model_and_tokenizer(
            resolved.path, dtype=dtype, device=device, trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision, name=cfg.name)
        return cls(model, tok, cfg.name, cfg.batch_size, cfg.score_batch_tokens, log=log)

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.log(line)

    def _route(self, longest: int) -> str | None:
        """Why this call goes to transformers' own code (None: the engine runs it)."""
        if self.plain:
            return self.plain
        if self.window and longest > self.window:
            self._say(f"{self.name}: sequences of up to {longest} tokens pass its "
                      f"{self.window}-token attention window: those calls run on "
                      "transformers' own generate and forward (slower), not on the engine")
            return "window"
        return None

    def _check_context(self, lengths: Sequence[int], new_tokens: int) -> None:
        if self.context is None:
            return
        for i, n in enumerate(lengths):
            if n + new_tokens > self.context:
                raise ContextLengthError(i, n, new_tokens, self.context, self.name)

    # -- text <-> tokens ------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(f"model '{self.name}' has no chat template: give raw-text prompts")
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, prompt: Prompt, continuation: str = "") -> list[int]:
        # A rendered chat already holds its special tokens; raw text gets the tokenizer's own.
        text = self.render(prompt) + continuation
        return self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]

    # -- generate -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        encoded = [self.encode(p) for p in prompts]
        self._check_context([len(e) for e in encoded], sampling.max_tokens)
        items = [(i, j) for i in range(len(prompts)) for j in range(sampling.n)]
        # Similar lengths together: less padding in every batch.
        items.sort(key=lambda it: (len(encoded[it[0]]), it))
        results: dict[tuple[int, int], Completion] = {}
        should_stop = self._stop_checker(sampling.stop) if sampling.stop else None
        for batch in self._memory_batches(items, encoded, sampling.max_tokens):
            reqs = [kv_engine.DecodeRequest(
                encoded[i], sample_seed(sampling.seed, prompt_key(prompts[i]), j))
                for i, j in batch]
            settings = dict(temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=sampling.top_k, max_tokens=sampling.max_tokens,
                            eos_ids=self.eos_ids, pad_id=self.pad_id, should_stop=should_stop)
            longest = max(len(encoded[i]) for i, _ in batch) + sampling.max_tokens
            if self._route(longest):
                with plain_engine.native_attention(self.model, self.native):
                    outs = plain_engine.generate(self.model, reqs, **settings)
                if progress:
                    progress(len(batch))
            else:
                outs = kv_engine.decode_batch(
                    self.model, reqs, **settings,
                    on_finish=(lambda _r: progress(1)) if progress else None)
            for (i, j), res in zip(batch, outs):
                text = self.tokenizer.decode(res.tokens, skip_special_tokens=True)
                text, stopped = cut_at_stop(text, sampling.stop)
                reason = "stop" if stopped else res.finish_reason
                # The sampled ids themselves: RL scores exactly these (decode -> encode can differ).
                results[(i, j)] = Completion(text, len(res.tokens), reason, len(encoded[i]),
                                             extra={"token_ids": res.tokens})
        return [[results[(i, j)] for j in range(sampling.n)] for i in range(len(prompts))]

    def _memory_batches(self, items, encoded, new_tokens: int) -> list[list]:
        """Runs of at most `batch_size` rows whose KV cache (rows x longest sequence x bytes
        per token) fits the memory budget."""
        tokens = kv_budget_bytes(self.model.device) / self._kv_bytes_per_token()
        return pack(items, lambda it: len(encoded[it[0]]) + new_tokens, tokens, self.batch_size)

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * heads * head_dim * self.model.dtype.itemsize

    def _stop_checker(self, stop: Sequence[str]):
        # A stop string of c characters spans at most 4c byte-level tokens.
        window = 4 * max(len(s) for s in stop) + 2
        decode = self.tokenizer.decode

        def should_stop(tokens: list[int]) -> bool:
            tail = decode(tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in stop)
        return should_stop

    # -- score choices --------------------------------------------------------------------
    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        rows: dict[tuple[int, ...], kv_engine.ScoreRow] = {}
        where: list[list[tuple[tuple[int, ...], int]]] = []   # (prompt, option) -> row, target
        for p, opts in zip(prompts, options):
            if not opts:
                raise InputError("score_choices needs at least one option per prompt")
            full = [self.encode(p, o) for o in opts]
            # Tokens all options end with (the ")" of " (A)"/" (B)") are not part of the
            # choice: score the distinguishing span only, so letters share one row.
            shared, end = option_span(full)
            refs = []
            for f in full:
                target = f[shared:len(f) - end]
                key = tuple(f[:shared] + target[:-1])
                row = rows.setdefault(key, kv_engine.ScoreRow(list(key), []))
                row.targets.append(target)
                refs.append((key, len(row.targets) - 1))
            where.append(refs)
        lengths = [len(k) + 1 for k in rows]          # a row's key is all but its last token
        self._check_context(lengths, 0)
        if self._route(max(lengths)):
            with plain_engine.native_attention(self.model, self.native):
                scores = self._plain_scores(list(rows.values()))
        else:
            scores = self._score_rows(list(rows.values()))
        by_key = {tuple(r.tokens): s for r, s in zip(rows.values(), scores)}
        if progress:
            progress(len(prompts))
        return [[by_key[key][t] for key, t in refs] for refs in where]

    def _score_rows(self, rows: list[kv_engine.ScoreRow]) -> list[list[float]]:
        """Group rows that share a long prefix; one prefix pass per group, then batches."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].tokens)
        out: list[list[float] | None] = [None] * len(rows)
        singles: list[int] = []
        g = 0
        while g < len(order):
            first = rows[order[g]].tokens
            # A group shares a good part of its first row, not merely a common head (a
            # template's first tokens would otherwise make the whole batch one group whose
            # prefix is too short to pay, and no question would share its conversation).
            need = max(MIN_SHARED_PREFIX, MIN_SHARED_FRACTION * len(first))
            end = g + 1
            while end < len(order) and _lcp(first, rows[order[end]].tokens) >= need:
                end += 1
            group = order[g:end]
            g = end
            # Each row's earliest read position must fall after the prefix.
            plen = min([_lcp(first, rows[group[-1]].tokens)] +
                       [len(rows[i].tokens) - max(map(len, rows[i].targets)) for i in group])
            mean_len = sum(len(rows[i].tokens) for i in group) / len(group)
            if len(group) < 2 or plen < max(MIN_SHARED_PREFIX, MIN_SHARED_FRACTION * mean_len):
                singles.extend(group)
                continue
            prefix = kv_engine.prefill_prefix(self.model, first[:plen])
            tails = [kv_engine.ScoreRow(rows[i].tokens[plen:], rows[i].targets) for i in group]
            for batch in self._budget_batches(list(range(len(group))), tails):
                vals = kv_engine.score_rows(self.model, prefix, [tails[k] for k in batch],
                                            self.pad_id)
                for k, v in zip(batch, vals):
                    out[group[k]] = v
        singles.sort(key=lambda i: len(rows[i].tokens))
        for batch in self._budget_batches(singles, rows):
            vals = kv_engine.score_rows(self.model, None, [rows[i] for i in batch], self.pad_id)
            for i, v in zip(batch, vals):
                out[i] = v
        return out  # type: ignore[return-value]

    def _plain_scores(self, rows: list[kv_engine.ScoreRow]) -> list[list[float]]:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].tokens))
        out: list[list[float] | None] = [None] * len(rows)
        for batch in self._budget_batches(order, rows):
            for i, v in zip(batch, plain_engine.score_rows(self.model, [rows[i] for i in batch],
                                                           self.pad_id)):
                out[i] = v
        return out  # type: ignore[return-value]

    def _budget_batches(self, idx: list[int], rows) -> list[list[int]]:
        """Runs whose padded size (rows x longest) fits the scoring token budget."""
        return pack(idx, lambda i: len(rows[i].tokens), self.score_batch_tokens)


def pack(items: list, length, budget: float, max_rows: int | None = None) -> list[list]:
    """Consecutive runs of `items` whose padded size (rows x the longest `length`) stays
    within `budget`, of at most `max_rows` rows; an item alone always makes a run."""
    batches, cur, longest = [], [], 0
    for it in items:
        n = length(it)
        full = max_rows is not None and len(cur) >= max_rows
        if cur and (full or max(longest, n) * (len(cur) + 1) > budget):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(it)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    return batches


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (gen_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _check_supported(config, name: str) -> None:
    """Refuse what no path here runs (the engine's gaps go to plain_engine.py)."""
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"model '{name}' is encoder-decoder; only decoder-only LMs are supported")


def kv_budget_bytes(device: torch.device) -> float:
    """Memory a generate batch's KV cache may take: CAI_KV_BUDGET_GB, else a quarter of the
    free memory of the device (the activations, the weights and other work need the rest)."""
    if os.environ.get("CAI_KV_BUDGET_GB"):
        return float(os.environ["CAI_KV_BUDGET_GB"]) * 2**30
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 4
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) * 1024 / 4
    except (OSError, KeyError, ValueError):
        return 4 * 2**30


if os.environ.get("CAI_THREADS"):
    # Optional cap on CPU threads (e.g. several runs sharing a machine); default: torch's own.
    torch.set_num_threads(int(os.environ["CAI_THREADS"]))
