"""Audit log of model calls: every prompt, its parameters, output, tokens and latency.

One JSON line per prompt of each call, appended to `calls.jsonl` in the run folder, so any
datum in an artifact can be traced to the exact model call that produced it. A resumed run
appends the calls it really makes (a chunk recomputed after a kill appears twice: once for the
lost attempt, once for the kept one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

from constitutional.backends.base import Completion, Progress, Prompt, Sampling


class LoggedBackend:
    """Wraps a backend; same interface, each call appended to a JSONL file."""

    def __init__(self, backend, path: str | Path):
        self.backend = backend
        self.name = backend.name
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def stats(self) -> dict:
        return getattr(self.backend, "stats", {})

    def _append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling,
                 progress: Progress | None = None) -> list[list[Completion]]:
        t0 = time.time()
        out = self.backend.generate(prompts, sampling, progress)
        latency = time.time() - t0
        params = dataclasses.asdict(sampling)
        self._append([{
            "time": t0, "model": self.name, "call": "generate", "prompt": p, "params": params,
            "outputs": [c.text for c in cs], "finish_reasons": [c.finish_reason for c in cs],
            "prompt_tokens": cs[0].prompt_tokens if cs else 0,
            "completion_tokens": [c.tokens for c in cs],
            "batch_size": len(prompts), "batch_latency_s": round(latency, 4)}
            for p, cs in zip(prompts, out)])
        return out

    def score_choices(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]],
                      progress: Progress | None = None) -> list[list[float]]:
        t0 = time.time()
        out = self.backend.score_choices(prompts, options, progress)
        latency = time.time() - t0
        self._append([{
            "time": t0, "model": self.name, "call": "score_choices", "prompt": p,
            "options": list(o), "logprobs": s, "batch_size": len(prompts),
            "batch_latency_s": round(latency, 4)} for p, o, s in zip(prompts, options, out)])
        return out
