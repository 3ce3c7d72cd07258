"""Stage `generate`: answer a file of prompts with a model, resumably.

Output rows: the prompt's id, text and messages, the sample index, the completion, why it
ended, and token counts; one row per (prompt, sample), in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from constitutional.artifacts import StageDir, StageResult, model_identity, run_model_stage
from constitutional.backends.base import Sampling
from constitutional.config import GenerateConfig
from constitutional.jsonio import sha256_file
from constitutional.prompts_io import PromptRow, load_prompts

STAGE = "generate"


def conversation(row: PromptRow, system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and row.messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + row.messages
    return row.messages


def run_generate(cfg: GenerateConfig, run_dir: str | Path, get_backend: Callable[[], object],
                 log: Callable[[str], None] = print, stage_name: str = STAGE) -> StageResult:
    """`get_backend` is called only if there is work to do (a finished stage loads no model).

    `stage_name` names the folder, so one run can hold several generate stages (e.g. the
    helpful answers of SL-CAI)."""
    path, rows = load_prompts(cfg.prompts, cfg.limit)
    sampling = Sampling.from_config(cfg.sampling)
    stage = StageDir(run_dir, stage_name)
    stage_cfg = {"model": cfg.model.model_dump(exclude={"batch_size", "score_batch_tokens"}),
                 "sampling": cfg.sampling.model_dump(), "system_prompt": cfg.system_prompt}

    def work(backend, chunk: list[PromptRow], advance) -> list[dict]:
        outs = backend.generate([conversation(r, cfg.system_prompt) for r in chunk],
                                sampling, progress=advance)
        return [{"id": r.id, "prompt": r.text, "messages": r.messages, "sample": j,
                 "completion": c.text, "finish_reason": c.finish_reason,
                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.tokens}
                for r, cs in zip(chunk, outs) for j, c in enumerate(cs)]

    inputs = {"prompts": sha256_file(path), "model": model_identity(cfg.model.name)}
    return run_model_stage(stage, config=stage_cfg, inputs=inputs,
                           items=rows, chunk_size=cfg.chunk_size, get_backend=get_backend,
                           work=work, total=len(rows) * sampling.n, unit="completions",
                           per_item=sampling.n, log=log)
