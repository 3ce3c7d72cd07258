"""The request bodies `cai serve` accepts, validated by models: a bad field is a 400 naming it.

The fields are OpenAI's (and vLLM's `top_k`); fields this server does not act on (`user`,
`presence_penalty`, `tools`, ...) are accepted and ignored, as OpenAI-compatible servers do,
so stock clients work unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from constitutional.backends.base import Sampling


class BadRequest(Exception):
    """A request the server refuses with 400 and this message."""


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"] = "user"
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampled(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="vLLM's: 0 or -1 means no top-k cut.")
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, limit: int, default: int = 256) -> Sampling:
        n_max = self.max_tokens if self.max_tokens is not None else \
            self.max_completion_tokens if self.max_completion_tokens is not None else default
        if n_max > limit:
            raise BadRequest(f"max_tokens must be an integer from 0 to {limit}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(n=self.n, temperature=self.temperature, top_p=self.top_p,
                        top_k=max(0, self.top_k), max_tokens=max(1, n_max), stop=stop,
                        seed=self.seed or 0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampled):
    prompt: str = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False


def parse(body: dict, cls: type[_Sampled]) -> _Sampled:
    """The body as a request model; the first problem as a BadRequest naming its field."""
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise BadRequest(f"{where}: {err['msg']}") from None
