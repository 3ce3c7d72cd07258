"""Backend `openai`: any OpenAI-compatible server (vLLM, llama.cpp, TGI, SGLang, `cai serve`).

generate: chats through /v1/chat/completions, raw text through /v1/completions, `n` samples
per request, the sampling seed passed on. score_choices: the options' shared text is added to
the prompt and /v1/completions is asked for one greedy token with its top-k log-probabilities;
each option's distinguishing text (" (A)" vs " (B)" -> "A" / "B") is looked up there. An
option missing from the top-k is not taken as probability zero: it gets the k-th
log-probability (an upper bound of its own) and is counted in `stats["missing_options"]`, and
the label stage's log says how many. Options that differ in more than one token need a
server that can score a prompt's own tokens; that is not built here.

Token counts come from the server's `usage`: exact with one sample per request; with `n`
samples a request's total is shared among them by their length in characters (the API gives
no per-sample count), so every total is the server's own. A server that sends no `usage`
falls back to word counts, counted in `stats["no_usage"]`.

Requests run concurrently (asyncio + httpx) up to `server.concurrency`, spread round-robin
over `server.base_urls` (one server per node is how generation scales across machines), with
timeouts and retries on 429, 5xx and network errors: after the server's `Retry-After` when it
sends one, else with exponential backoff. Without `server.base_urls` the client reads
`OPENAI_BASE_URL`; without `server.api_key_env`, `OPENAI_API_KEY` when it is set (the
OpenAI client's own variables). The key is never logged or written.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from typing import Sequence

from constitutional.backends.base import Completion, Progress, Prompt, Sampling, nested_pair
from constitutional.errors import InputError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 600.0       # a longer wait asked for is capped here


class ServerError(RuntimeError):
    """The server refused a request for good (after retries, or a 4xx)."""


class OpenAICompatBackend:
    def __init__(self, name: str, server, transport=None, log=print):
        self.urls = list(server.base_urls) or \
            [u for u in [os.environ.get("OPENAI_BASE_URL", "").strip()] if u]
        if not self.urls:
            raise InputError("backend openai needs server.base_urls (e.g. "
                             "http://127.0.0.1:8000/v1) or OPENAI_BASE_URL",
                             field="model.server.base_urls")
        self.name, self.server, self.log = name, server, log
        self._key = os.environ.get("OPENAI_API_KEY") or None
        if server.api_key_env:
            self._key = os.environ.get(server.api_key_env)
            if not self._key:
                raise InputError(f"environment variable {server.api_key_env} (the API key) "
                                 "is not set", field="model.server.api_key_env")
        self._transport = transport          # tests put an httpx.MockTransport here
        self._next = 0
        self.stats = {"requests": 0, "retries": 0, "missing_options": 0, "no_usage": 0,
                      "retry_after_s": 0.0}

    @classmethod
    def from_config(cls, cfg, log=print) -> "OpenAICompatBackend":
        return cls(cfg.name, cfg.server, log=log)

    # -- the interface ---------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        bodies = [self._generate_body(p, sampling) for p in prompts]
        outs = self._run(bodies, progress)
        return [self._completions(o, chat=not isinstance(p, str)) for p, o in zip(prompts, outs)]

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        bodies, wanted = [], []
        for p, opts in zip(prompts, options):
            if not isinstance(p, str):
                raise InputError("choice scoring over HTTP needs raw-text prompts (label "
                                 "with prompt_format: text)", field="prompt_format")
            shared, diffs = split_options(opts)
            nested = nested_pair(diffs)
            if nested:
                # one token is read per option: "1" would also count the mass of "10"
                raise InputError(f"options {nested[0]!r} and {nested[1]!r} cannot be "
                                 "told apart over HTTP (one token is read per option); "
                                 "score them with a local engine (transformers, vLLM)",
                                 field="model.backend")
            bodies.append(("/completions", {"model": self.name, "prompt": p + shared,
                                            "max_tokens": 1, "temperature": 0,
                                            "logprobs": self.server.top_logprobs}))
            wanted.append(diffs)
        outs = self._run(bodies, progress)
        return [self._option_logprobs(o, diffs) for o, diffs in zip(outs, wanted)]

    # -- requests ----------------------------------------------------------------------------
    def _generate_body(self, prompt: Prompt, s: Sampling) -> tuple[str, dict]:
        body = {"model": self.name, "n": s.n, "temperature": s.temperature, "top_p": s.top_p,
                "max_tokens": s.max_tokens, "seed": s.seed}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.top_k:
            body["top_k"] = s.top_k
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        if self.server.endpoint == "completions":
            raise InputError("endpoint completions takes raw-text prompts only; chats go to "
                             "the chat endpoint", field="model.server.endpoint")
        return "/chat/completions", {**body, "messages": list(prompt)}

    def _completions(self, out: dict, chat: bool) -> list[Completion]:
        choices = sorted(out["choices"], key=lambda c: c.get("index", 0))
        texts = [(c["message"]["content"] if chat else c["text"]) or "" for c in choices]
        usage = out.get("usage") or {}
        total, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        if isinstance(total, int):
            counts = share(total, [len(t) for t in texts])
        else:
            self.stats["no_usage"] += 1
            counts = [len(t.split()) for t in texts]
        return [Completion(t, k, "length" if c.get("finish_reason") == "length" else "stop",
                           prompt if isinstance(prompt, int) else 0)
                for t, k, c in zip(texts, counts, choices)]

    def _option_logprobs(self, out: dict, diffs: list[str]) -> list[float]:
        top = out["choices"][0]["logprobs"]["top_logprobs"][0]
        floor = min(top.values())
        values = []
        for d in diffs:
            if d in top:
                values.append(float(top[d]))
            else:
                self.stats["missing_options"] += 1
                values.append(float(floor))
        return values

    def _run(self, bodies: list[tuple[str, dict]], progress: Progress | None) -> list[dict]:
        return asyncio.run(self._run_async(bodies, progress))

    async def _run_async(self, bodies, progress) -> list[dict]:
        import httpx

        sem = asyncio.Semaphore(self.server.concurrency)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        async with httpx.AsyncClient(timeout=self.server.timeout_s, headers=headers,
                                     transport=self._transport) as client:
            async def one(path: str, body: dict) -> dict:
                async with sem:
                    out = await self._post(client, path, body)
                if progress:
                    progress(1)
                return out
            return await asyncio.gather(*(one(p, b) for p, b in bodies))

    async def _post(self, client, path: str, body: dict) -> dict:
        import httpx

        urls = self.urls
        for attempt in range(self.server.retries + 1):
            url = urls[self._next % len(urls)].rstrip("/") + path
            self._next += 1
            self.stats["requests"] += 1
            try:
                r = await client.post(url, json=body)
                if r.status_code < 400:
                    return r.json()
                if r.status_code not in RETRY_STATUS:
                    raise ServerError(f"{url}: HTTP {r.status_code}: {_message(r)}")
                problem, wait = f"HTTP {r.status_code}", retry_after(r.headers)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem, wait = type(e).__name__, None
            if attempt == self.server.retries:
                raise ServerError(f"{url}: {problem} after {attempt + 1} attempts")
            self.stats["retries"] += 1
            if wait is not None:
                self.stats["retry_after_s"] += wait
            else:
                wait = min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random())
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")


def retry_after(headers) -> float | None:
    """The seconds a `Retry-After` header asks for (a number, or an HTTP date), capped."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def share(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders), summing to `total`."""
    if len(weights) == 1:
        return [total]
    w = [max(1, x) for x in weights]
    exact = [total * x / sum(w) for x in w]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(w)), key=lambda i: counts[i] - exact[i])[:total - sum(counts)]:
        counts[i] += 1
    return counts


def split_options(options: Sequence[str]) -> tuple[str, list[str]]:
    """(shared leading text, each option's distinguishing part) with the shared trailing
    text dropped: [" (A)", " (B)"] -> (" (", ["A", "B"])."""
    k = len(os.path.commonprefix(list(options)))
    rest = [o[k:] for o in options]
    tail = len(os.path.commonprefix([r[::-1] for r in rest]))
    return options[0][:k], [r[:len(r) - tail] if tail else r for r in rest]


def _message(r) -> str:
    try:
        return str(r.json().get("error", {}).get("message", ""))[:200]
    except ValueError:
        return r.text[:200]
