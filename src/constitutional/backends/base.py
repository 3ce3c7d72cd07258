"""The one narrow interface every engine implements: generate, and score choices.

A prompt is either a chat (a list of {"role", "content"} messages, rendered with the model's
chat template and a generation prompt) or a plain string (raw text, continued as is: the
"Human: ... Assistant:" format of the CAI paper on a pretrained model).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, Union, runtime_checkable

from constitutional.errors import InputError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
Prompt = Union[str, Sequence[Message]]
Progress = Callable[[int], None]  # called with the number of items just finished


class ContextLengthError(InputError):
    """A prompt that, with the new tokens asked for, passes the model's context. `index` is
    its place in the call's prompts, so a stage can name the row."""

    def __init__(self, index: int, tokens: int, new_tokens: int, limit: int, model: str):
        self.index, self.tokens, self.limit = index, tokens, limit
        more = f" and {new_tokens} new tokens" if new_tokens else ""
        super().__init__(f"the prompt is {tokens} tokens{more}, past {model}'s context of "
                         f"{limit} tokens (shorten it, or lower max_tokens)")
        self.reason = str(self)


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters of one generate call (see config.SamplingConfig for the docs)."""
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "Sampling":
        return cls(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                   max_tokens=cfg.max_tokens, stop=tuple(cfg.stop), seed=cfg.seed)


@dataclass
class Completion:
    text: str
    tokens: int                     # new tokens generated (before cutting at a stop string)
    finish_reason: str              # "stop" (end token or stop string) or "length"
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str           # the model name as the user gave it

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        """For each prompt, `sampling.n` completions. Deterministic for a given seed."""

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        """For each prompt, the log-probability of each option as its continuation.

        Read from one forward pass (no text generated). Only the tokens that tell the options
        apart are scored: leading tokens they share are conditioned on (" (" of " (A)"/" (B)")
        and trailing tokens they share are dropped (the ")"), so for " (A)"/" (B)" the values
        are the next-token log-probabilities of "A" and "B" after "... (".
        """


def sample_seed(seed: int, prompt_key: str, index: int) -> int:
    """A 63-bit seed for one (prompt, sample): independent of batching, order and resume."""
    digest = hashlib.sha256(f"{seed}\x00{index}\x00{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def prompt_key(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return "raw\x00" + prompt
    return "\x00".join(f"{m['role']}\x01{m['content']}" for m in prompt)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text before the earliest stop string; return (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def option_span(seqs: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(lead, trail) of one prompt's options, as token sequences of prompt + option, for
    score_choices: the tokens all of them start with (conditioned on, not scored) and end with
    (dropped: the ")" of " (A)"/" (B)"). Each option keeps at least one scored token. A shared
    ending is kept as far as dropping it would make one option's scored tokens a prefix of
    another's (" 1/10" and " 10/10" where digits are single tokens: "1" would also count the
    mass of "10"), so the options stay exclusive."""
    lead = min(_common_prefix(seqs), min(map(len, seqs)) - 1)
    tails = [s[lead:] for s in seqs]
    trail = min(_common_prefix([t[::-1] for t in tails]), min(map(len, tails)) - 1)
    while trail > 0 and nested_pair([t[:len(t) - trail] for t in tails]):
        trail -= 1
    return lead, trail


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n, first = min(map(len, seqs)), seqs[0]
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return k


def nested_pair(seqs: Sequence[Sequence]) -> tuple | None:
    """(shorter, longer) for the first sequence (of tokens, or a string) that is a strict
    prefix of another, or None: options scored so would not be exclusive."""
    by_tuple = {tuple(s): s for s in seqs}
    for s in seqs:
        for k in range(1, len(s)):
            if tuple(s[:k]) in by_tuple:
                return by_tuple[tuple(s[:k])], s
    return None
