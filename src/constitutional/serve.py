"""`cai serve MODEL`: an OpenAI-compatible server for any model the toolkit can load.

Endpoints: GET /health (no token needed), GET /v1/models, POST /v1/chat/completions and POST
/v1/completions (with `stream`, `n`, `temperature`, `top_p`, `top_k`, `max_tokens`, `stop`,
`seed`; `logprobs` = top-k log-probabilities of the first generated token, and `echo` with
`max_tokens: 0` for the log-probabilities of the prompt's own tokens, which is what
log-likelihood scoring over HTTP needs). Bodies are validated by the models of
serve_requests.py: a bad field is a 400 that names it. `usage` counts the engine's tokens.

Concurrent requests are batched: requests that arrive within `batch_window_s` and share their
sampling settings go to the engine in one `generate` call, run in a worker thread so the
event loop keeps accepting. More than `max_pending` requests waiting or running get a 429 with
`Retry-After`, so clients back off instead of piling up.

Streaming (`"stream": true`, both endpoints) sends server-sent events in OpenAI's chunk
format, ending with `data: [DONE]`, and a last chunk with `usage` when `stream_options:
{"include_usage": true}`. The engine decodes a whole batch at once, not token by token, so
the chunks (one per word) arrive together when the completion is finished: streaming keeps
clients that expect it working; it does not lower the time to the first token.
Binds 127.0.0.1 unless told otherwise; an optional bearer token; request size and
`max_tokens` limits.
"""


import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from constitutional.backends.base import Sampling
from constitutional.serve_requests import (BadRequest, ChatRequest, CompletionRequest,
                                           parse)


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
               max_logprobs: int = 20, max_pending: int = 256, retry_after_s: int = 1):
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="constitutional", docs_url=None, redoc_url=None)
    app.state.batcher = Batcher(backend, batch_window_s)
    app.state.pending = 0

    _add_guards(app, token, max_request_bytes, model_name, max_pending, retry_after_s)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(await _parse(request), ChatRequest)
        s = req.sampling(max_tokens)
        outs = await app.state.batcher.generate(
            [{"role": m.role, "content": m.content} for m in req.messages], s)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            return StreamingResponse(_stream(outs, rid, created, model_name, True,
                                             req.include_usage),
                                     media_type="text/event-stream")
        return _chat_body(outs, rid, created, model_name)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(await _parse(request), CompletionRequest)
        s = req.sampling(max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        choice = await _scored_choice(backend, req, s, max_logprobs)
        if choice is not None:
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": model_name, "choices": [choice]}
        outs = await app.state.batcher.generate(req.prompt, s)
        if req.stream:
            return StreamingResponse(_stream(outs, rid, created, model_name, False,
                                             req.include_usage),
                                     media_type="text/event-stream")
        return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                "usage": _usage(outs),
                "choices": [{"index": i, "text": o.text, "finish_reason": o.finish_reason,
                             "logprobs": None} for i, o in enumerate(outs)]}

    return app


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    kind = "rate_limit_error" if status == 429 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status,
                        headers=headers)


def _add_guards(app, token: str | None, max_request_bytes: int, model_name: str,
                max_pending: int, retry_after_s: int) -> None:
    """The bearer token, size and load checks on every request, the 400 for a bad request,
    and the informational routes."""
    from fastapi import Request

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path == "/health":
            return await call_next(request)
        if token and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "missing or wrong bearer token")
        size = request.headers.get("content-length")
        if size and int(size) > max_request_bytes:
            return _error(413, f"request larger than {max_request_bytes} bytes")
        if request.method != "POST":
            return await call_next(request)
        if app.state.pending >= max_pending:
            return _error(429, f"more than {max_pending} requests pending; retry later",
                          {"Retry-After": str(retry_after_s)})
        app.state.pending += 1
        try:
            return await call_next(request)
        finally:
            app.state.pending -= 1

    @app.exception_handler(BadRequest)
    async def bad(_request, exc: BadRequest):
        return _error(400, str(exc))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "pending": app.state.pending}

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
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def _scored_choice(backend, req: CompletionRequest, s: Sampling,
                         max_logprobs: int) -> dict | None:
    """The two scoring requests a client makes instead of generating: the prompt's own
    log-probabilities (`echo` with 0 new tokens), or the top next-token log-probabilities
    (one greedy token with `logprobs`). None for an ordinary completion."""
    k, prompt = req.logprobs, req.prompt
    if req.echo and req.max_tokens == 0:
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


async def _stream(outs, rid: str, created: int, model: str, chat: bool, include_usage: bool):
    """Server-sent events in OpenAI's chunk format: chat deltas, or completion text pieces."""
    def event(choices, **extra) -> str:
        obj = "chat.completion.chunk" if chat else "text_completion"
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                      "model": model, "choices": choices, **extra}) + "\n\n"

    def piece(i: int, text: str | None, finish: str | None) -> dict:
        if not chat:
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"index": i, "delta": {} if text is None else {"content": text},
                "finish_reason": finish}

    for i, o in enumerate(outs):
        if chat:
            yield event([{"index": i, "delta": {"role": "assistant"}, "finish_reason": None}])
        for w, word in enumerate(o.text.split(" ")):
            yield event([piece(i, word if w == 0 else " " + word, None)])
        yield event([piece(i, None, o.finish_reason)])
    if include_usage:
        yield event([], usage=_usage(outs))
    yield "data: [DONE]\n\n"
