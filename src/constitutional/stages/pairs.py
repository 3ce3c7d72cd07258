"""Stage `pairs`: the policy (the SL-CAI model, or any model) answers each prompt twice.

These pairs are what the feedback model labels. Two identical answers teach a preference
model nothing, so a pair whose answers match (after normalizing whitespace and case) is
resampled with fresh seeds up to `resample` times; if still identical, or if an answer is
empty, the row is kept with `ok: false` and a flag, so the count is visible and nothing is
silently dropped. The label stage skips rows that are not ok.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import Field, model_validator

from constitutional.artifacts import StageResult, model_identity, run_model_stage
from constitutional.backends.base import Sampling
from constitutional.config import (NOT_RESULTS, ModelConfig, SamplingConfig, StrictModel,
                                   results_config)
from constitutional.datasource import digest
from constitutional.prompts_io import PromptRow, conversation, load_prompts
from constitutional.rundir import RunDir
from constitutional.stages.base import require_sl_model
from constitutional.transcripts import DEFAULT_STOPS



class PairsConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy: "
                               "normally the SL-CAI model (RUN/sl_model/model).")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, max_tokens=128,
                                               stop=list(DEFAULT_STOPS)),
        description="Decoding; the paper samples the two answers at temperature 1.")
    prompts: str = Field("bundled:redteam", description="Prompts to answer (JSONL).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.",
                              json_schema_extra=NOT_RESULTS)   # the rows count is hashed
    system_prompt: str | None = None
    resample: int = Field(2, ge=0, description="Fresh tries for a pair whose two answers "
                          "are identical, before it is flagged.")
    chunk_size: int = Field(64, ge=1, description="Prompts per resumable shard.",
                            json_schema_extra=NOT_RESULTS)
    log_calls: bool = Field(True, json_schema_extra=NOT_RESULTS)

    @model_validator(mode="after")
    def _two_samples(self):
        if self.sampling.n not in (1, 2):
            raise ValueError("sampling.n: a pair is two answers; leave n at 2")
        return self


def same_answer(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def run_pairs(cfg: PairsConfig, run_dir: str | Path, get_backend: Callable[[], object],
              log: Callable[[str], None] = print) -> StageResult:
    path, rows = load_prompts(cfg.prompts, cfg.limit)
    stage = RunDir.of(run_dir).pairs
    stage_cfg = results_config(cfg)
    def work(backend, chunk: list[PromptRow], advance) -> list[dict]:
        out = pairs_chunk(backend, chunk, cfg)
        advance(len(chunk))
        return out

    inputs = {"prompts": digest(path), "policy": model_identity(cfg.model.name)}
    return run_model_stage(stage, config=stage_cfg, inputs=inputs,
                           items=rows, chunk_size=cfg.chunk_size, get_backend=get_backend,
                           work=work, total=len(rows), unit="prompts", log=log)


def pairs_chunk(backend, chunk: list[PromptRow], cfg: PairsConfig) -> list[dict]:
    base = Sampling.from_config(cfg.sampling)
    convs = [conversation(r, cfg.system_prompt) for r in chunk]
    first = backend.generate(convs, Sampling(**{**base.__dict__, "n": 2}))
    answers = [[c[0], c[1]] for c in first]
    tries = [0] * len(chunk)
    for attempt in range(1, cfg.resample + 1):
        todo = [i for i, (a, b) in enumerate(answers) if same_answer(a.text, b.text)]
        if not todo:
            break
        # A different seed per attempt; the row's own stream keeps it independent of batching.
        again = backend.generate([convs[i] for i in todo],
                                 Sampling(**{**base.__dict__, "n": 1,
                                             "seed": base.seed + 7919 * attempt}))
        for i, c in zip(todo, again):
            answers[i][1] = c[0]
            tries[i] = attempt
    out = []
    for r, (a, b), t in zip(chunk, answers, tries):
        flags = (["empty"] if not a.text.strip() or not b.text.strip() else []) + \
            (["identical"] if same_answer(a.text, b.text) else [])
        out.append({"id": r.id, "prompt": r.text, "messages": r.messages,
                    "response_a": a.text.strip(), "response_b": b.text.strip(),
                    "finish_reasons": [a.finish_reason, b.finish_reason], "resampled": t,
                    "flags": flags, "ok": not flags})
    return out


# -- the recipe stage ------------------------------------------------------------------------

class Section(StrictModel):
    pairs: PairsConfig = Field(default_factory=PairsConfig)


FAKE = ("pairs.model",)


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """The SL-CAI model answers each RL prompt twice (pairs/)."""
    require_sl_model(run)
    pairs = cfg.pairs.model_copy(update={"model": cfg.pairs.model.model_copy(
        update={"name": str(run.sl_model)})})
    return [run_pairs(pairs, run, lambda: models.load(pairs.model), run.log)]
