"""`cai serve MODEL`: an OpenAI-compatible server for any model the toolkit can load.

Endpoints: GET /v1/models, POST /v1/chat/completions and POST /v1/completions (with `stream`,
`n`, `temperature`, `top_p`, `max_tokens`, `stop`, `seed`; `logprobs` = top-k log-probabilities
of the first generated token, and `echo` with `max_tokens: 0` for the log-probabilities of the
prompt's own tokens, which is what log-likelihood scoring over HTTP needs).

Concurrent requests are batched: requests that arrive within `batch_window_s` and share their
sampling settings go to the engine in one `generate` call, run in a worker thread so the
event loop keeps accepting. Streaming sends the finished completion as server-sent events
(the engine decodes a batch at once, not token by token). Binds 127.0.0.1 unless told
otherwise; an optional bearer token; request size and `max_tokens` limits.
"""


import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from constitutional.backends.base import Sampling


@dataclass
class _Job:
    prompt: Any
    sampling: Sampling
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


class Batcher:
    """Collects generate requests for a short window and runs them as batches."""

    def __init__(self, backend, window_s: float = 0.02):
        self.backend, self.window_s = backend, window_s
        self.queue: asyncio.Queue[_Job] | None = None
        self.batches: list[int] = []      # sizes of the engine calls made (for tests)

    async def generate(self, prompt, sampling: Sampling):
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._worker())
        job = _Job(prompt, sampling, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _worker(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(self.window_s)
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[Sampling, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.sampling, []).append(j)
            for sampling, group in groups.items():
                self.batches.append(len(group))
                try:
                    outs = await asyncio.to_thread(self.backend.generate,
                                                   [j.prompt for j in group], sampling)
                    for j, o in zip(group, outs):
                        j.future.set_result(o)
                except Exception as e:            # the error goes to every waiting request
                    for j in group:
                        j.future.set_exception(e)


def next_token_logprobs(backend, text: str, k: int) -> list[tuple[str, float]]:
    """The k most likely next tokens after raw `text`, with their log-probabilities."""
    import torch

    ids = backend.encode(text)
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids], device=backend.model.device)).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    top = torch.topk(logp, min(k, logp.shape[-1]))
    return [(backend.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values,
                                                                          top.indices)]


def prompt_logprobs(backend, text: str) -> tuple[list[str], list[float | None], list[int]]:
    """Tokens of `text`, each one's log-probability given those before (None for the first),
    and each token's character offset."""
    import torch

    enc = backend.tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids], device=backend.model.device)).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    lps = [None] + [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
    tokens = [backend.tokenizer.decode([i]) for i in ids]
    return tokens, lps, [int(a) for a, _ in enc["offset_mapping"]]


def create_app(backend, model_name: str, token: str | None = None, max_tokens: int = 1024,
               max_request_bytes: int = 1_000_000, batch_window_s: float = 0.02,
               max_logprobs: int = 20):
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="constitutional", docs_url=None, redoc_url=None)
    app.state.batcher = Batcher(backend, batch_window_s)

    _add_guards(app, token, max_request_bytes, model_name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _parse(request)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
            raise _Bad("`messages` must be a non-empty list of {role, content}")
        s = _sampling(body, max_tokens)
        outs = await app.state.batcher.generate(
            [{"role": m.get("role", "user"), "content": m["content"]} for m in msgs], s)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            return StreamingResponse(_chat_stream(outs, rid, created, model_name),
                                     media_type="text/event-stream")
        return _chat_body(outs, rid, created, model_name)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _Bad("`prompt` must be a non-empty string")
        s = _sampling(body, max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        choice = await _scored_choice(backend, body, prompt, s, max_logprobs)
        if choice is not None:
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": model_name, "choices": [choice]}
        outs = await app.state.batcher.generate(prompt, s)
        return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                "usage": _usage(outs),
                "choices": [{"index": i, "text": o.text, "finish_reason": o.finish_reason,
                             "logprobs": None} for i, o in enumerate(outs)]}

    return app


class _Bad(Exception):
    """A request the server refuses with 400 and this message."""


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}},
                        status_code=status)


def _add_guards(app, token: str | None, max_request_bytes: int, model_name: str) -> None:
    """The bearer token and size checks on every request, the 400 for a bad request, and
    the two informational routes."""
    from fastapi import Request

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "missing or wrong bearer token")
        size = request.headers.get("content-length")
        if size and int(size) > max_request_bytes:
            return _error(413, f"request larger than {max_request_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(_Bad)
    async def bad(_request, exc: _Bad):
        return _error(400, str(exc))

    @app.get("/v1/stats")
    async def stats():
        return {"batches": app.state.batcher.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "constitutional"}]}


def _chat_body(outs, rid: str, created: int, model_name: str) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
            "usage": _usage(outs),
            "choices": [{"index": i, "finish_reason": o.finish_reason,
                         "message": {"role": "assistant", "content": o.text}}
                        for i, o in enumerate(outs)]}


async def _parse(request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _Bad("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Bad("the body must be a JSON object")
    return body


def _sampling(body: dict, max_tokens: int, default_max: int = 256) -> Sampling:
    n_max = body.get("max_tokens", body.get("max_completion_tokens", default_max))
    if not isinstance(n_max, int) or n_max < 0 or n_max > max_tokens:
        raise _Bad(f"max_tokens must be an integer from 0 to {max_tokens}")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    return Sampling(n=int(body.get("n", 1)), temperature=float(body.get("temperature", 1.0)),
                    top_p=float(body.get("top_p", 1.0)), max_tokens=max(1, n_max),
                    stop=stop, seed=int(body.get("seed", 0) or 0))


async def _scored_choice(backend, body: dict, prompt: str, s: Sampling,
                         max_logprobs: int) -> dict | None:
    """The two scoring requests a client makes instead of generating: the prompt's own
    log-probabilities (`echo` with 0 new tokens), or the top next-token log-probabilities
    (one greedy token with `logprobs`). None for an ordinary completion."""
    k = body.get("logprobs")
    if body.get("echo") and body.get("max_tokens") == 0:
        tokens, lps, offsets = await asyncio.to_thread(prompt_logprobs, backend, prompt)
        return {"index": 0, "text": prompt, "finish_reason": "length",
                "logprobs": {"tokens": tokens, "token_logprobs": lps,
                             "text_offset": offsets, "top_logprobs": None}}
    if isinstance(k, int) and k > 0 and s.max_tokens == 1 and s.temperature == 0:
        top = await asyncio.to_thread(next_token_logprobs, backend, prompt,
                                      min(k, max_logprobs))
        return {"index": 0, "text": top[0][0], "finish_reason": "length",
                "logprobs": {"tokens": [top[0][0]], "token_logprobs": [top[0][1]],
                             "top_logprobs": [dict(top)], "text_offset": [len(prompt)]}}
    return None


def _usage(outs) -> dict:
    prompt = outs[0].prompt_tokens if outs else 0
    done = sum(o.tokens for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


async def _chat_stream(outs, rid: str, created: int, model: str):
    def event(choices) -> str:
        return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk",
                                      "created": created, "model": model,
                                      "choices": choices}) + "\n\n"

    for i, o in enumerate(outs):
        yield event([{"index": i, "delta": {"role": "assistant"}, "finish_reason": None}])
        words = o.text.split(" ")
        for w, word in enumerate(words):
            piece = word if w == 0 else " " + word
            yield event([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "finish_reason": o.finish_reason}])
    yield "data: [DONE]\n\n"
