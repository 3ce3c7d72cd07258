"""A scripted backend: deterministic replies and log-probabilities, no model.

Used by the tests (scripted callables) and by `--dry-run` (regex rules from a YAML file, or a
default reply). It records every call in `calls`, so tests can check the order of steps.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Callable, Sequence

from constitutional.backends.base import (Completion, Progress, Prompt, Sampling, cut_at_stop,
                                          prompt_key)
from constitutional.errors import InputError

ReplyFn = Callable[[Prompt, int], str]              # (prompt, sample index) -> text
ScoreFn = Callable[[Prompt, Sequence[str]], list[float]]


def last_user_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def _hash_unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2**64


def default_reply(prompt: Prompt, index: int) -> str:
    """Echoes the last user turn, and the start of a system turn if there is one (so a
    revision asked for under its own instructions differs from the answer it replaces)."""
    system = [m["content"] for m in prompt if m["role"] == "system"] \
        if not isinstance(prompt, str) else []
    under = f" (under: {system[0][:48]})" if system else ""
    return f"[fake reply {index}] {last_user_text(prompt)[:60]}{under}"


def default_scores(prompt: Prompt, options: Sequence[str]) -> list[float]:
    # Deterministic, prompt-dependent log-probabilities in [-3, -0.05].
    return [-0.05 - 2.95 * _hash_unit(prompt_key(prompt) + "\x00" + o) for o in options]


class FakeBackend:
    def __init__(self, reply: ReplyFn | None = None, scores: ScoreFn | None = None,
                 name: str = "fake", latency_s: float = 0.0):
        self.name = name
        self.reply = reply or default_reply
        self.scores = scores or default_scores
        self.latency_s = latency_s
        self.calls: list[tuple[str, list]] = []

    @classmethod
    def from_config(cls, cfg, log=print) -> "FakeBackend":
        reply = rules_reply(load_rules(cfg.fake_script)) if cfg.fake_script else None
        return cls(reply=reply, name=cfg.name)

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        self.calls.append(("generate", list(prompts)))
        out = []
        for p in prompts:
            samples = []
            for j in range(sampling.n):
                raw = self.reply(p, j)
                text, stopped = cut_at_stop(raw, sampling.stop)
                words = text.split()
                reason = "stop"
                if len(words) > sampling.max_tokens:
                    text, reason = " ".join(words[:sampling.max_tokens]), "length"
                samples.append(Completion(text, min(len(words), sampling.max_tokens), reason))
            if self.latency_s:
                time.sleep(self.latency_s)
            out.append(samples)
            if progress:
                progress(1)
        return out

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        self.calls.append(("score_choices", list(prompts)))
        out = [list(self.scores(p, opts)) for p, opts in zip(prompts, options)]
        if progress:
            progress(len(prompts))
        return out


def load_rules(path: str) -> list[tuple[re.Pattern, str]]:
    from constitutional.config import load_yaml  # local: keeps this module import-light

    data = load_yaml(path).get("rules") if Path(path).suffix in (".yaml", ".yml") else None
    if not isinstance(data, list):
        raise InputError("expected `rules:` with a list of {match, reply}", path=path)
    rules = []
    for i, r in enumerate(data):
        if not isinstance(r, dict) or "match" not in r or "reply" not in r:
            raise InputError("each rule needs `match` and `reply`", path=path, field=f"rules[{i}]")
        try:
            rules.append((re.compile(r["match"], re.S), str(r["reply"])))
        except re.error as e:
            raise InputError(f"bad regex: {e}", path=path, field=f"rules[{i}].match") from None
    return rules


def rules_reply(rules: list[tuple[re.Pattern, str]]) -> ReplyFn:
    def reply(prompt: Prompt, index: int) -> str:
        text = last_user_text(prompt)
        for pattern, answer in rules:
            if pattern.search(text):
                return answer
        return default_reply(prompt, index)
    return reply
