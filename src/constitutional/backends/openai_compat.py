"""Backend `openai`: any OpenAI-compatible server (vLLM, llama.cpp, TGI, SGLang, `cai serve`).

generate: chats through /v1/chat/completions, raw text through /v1/completions, `n` samples
per request, the sampling seed passed on. score_choices: the options' shared text is added to
the prompt and /v1/completions is asked for one greedy token with its top-k log-probabilities;
each option's distinguishing text (" (A)" vs " (B)" -> "A" / "B") is looked up there. An
option missing from the top-k is not taken as probability zero: it gets the k-th
log-probability (an upper bound of its own) and is counted in `stats["missing_options"]`, and
the label stage's log says how many. Options that differ in more than one token need a
server that can score a prompt's own tokens; that is not built here.

Requests run concurrently (asyncio + httpx) up to `server.concurrency`, spread round-robin
over `server.base_urls` (one server per node is how generation scales across machines), with
timeouts and retries with exponential backoff on 429, 5xx and network errors. The API key
comes from the environment variable `server.api_key_env` and is never logged or written.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Sequence

from constitutional.backends.base import Completion, Progress, Prompt, Sampling
from constitutional.errors import InputError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    """The server refused a request for good (after retries, or a 4xx)."""


class OpenAICompatBackend:
    def __init__(self, name: str, server, transport=None, log=print):
        if not server.base_urls:
            raise InputError("backend openai needs server.base_urls (e.g. "
                             "http://127.0.0.1:8000/v1)", field="model.server.base_urls")
        self.name, self.server, self.log = name, server, log
        self._key = None
        if server.api_key_env:
            self._key = os.environ.get(server.api_key_env)
            if not self._key:
                raise InputError(f"environment variable {server.api_key_env} (the API key) "
                                 "is not set", field="model.server.api_key_env")
        self._transport = transport          # tests put an httpx.MockTransport here
        self._next = 0
        self.stats = {"requests": 0, "retries": 0, "missing_options": 0}

    @classmethod
    def from_config(cls, cfg, log=print) -> "OpenAICompatBackend":
        return cls(cfg.name, cfg.server, log=log)

    # -- the interface ---------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        bodies = [self._generate_body(p, sampling) for p in prompts]
        outs = self._run(bodies, progress)
        return [[self._completion(c, chat=not isinstance(p, str)) for c in
                 sorted(o["choices"], key=lambda c: c.get("index", 0))]
                for p, o in zip(prompts, outs)]

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        bodies, wanted = [], []
        for p, opts in zip(prompts, options):
            if not isinstance(p, str):
                raise InputError("choice scoring over HTTP needs raw-text prompts (label "
                                 "with prompt_format: text)", field="prompt_format")
            shared, diffs = split_options(opts)
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

    def _completion(self, choice: dict, chat: bool) -> Completion:
        text = choice["message"]["content"] if chat else choice["text"]
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text or "", len((text or "").split()), reason)

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

        urls = self.server.base_urls
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
                problem = f"HTTP {r.status_code}"
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = type(e).__name__
            if attempt == self.server.retries:
                raise ServerError(f"{url}: {problem} after {attempt + 1} attempts")
            self.stats["retries"] += 1
            await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")


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
