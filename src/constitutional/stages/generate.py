"""Stage `generate`: answer a file of prompts with a model, resumably.

Output rows: the prompt's id, text and messages, the sample index, the completion, why it
ended, and token counts; one row per (prompt, sample), in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from constitutional.artifacts import StageDir, StageResult, model_identity, run_model_stage
from constitutional.rundir import RunDir
from constitutional.backends.base import ContextLengthError, Sampling
from constitutional.config import GenerateConfig, results_config
from constitutional.datasource import digest
from constitutional.prompts_io import PromptRow, conversation, load_prompts, name_row



def run_generate(cfg: GenerateConfig, run_dir: str | Path, get_backend: Callable[[], object],
                 log: Callable[[str], None] = print,
                 folder: StageDir | None = None) -> StageResult:
    """`get_backend` is called only if there is work to do (a finished stage loads no model).

    `folder` (from the RunDir; default `generate/`) lets one run hold several generate steps
    (e.g. the helpful answers of SL-CAI)."""
    path, rows = load_prompts(cfg.prompts, cfg.limit)
    sampling = Sampling.from_config(cfg.sampling)
    stage = folder or RunDir.of(run_dir).generate
    stage_cfg = results_config(cfg)

    def work(backend, chunk: list[PromptRow], advance) -> list[dict]:
        try:
            outs = backend.generate([conversation(r, cfg.system_prompt, cfg.user_template)
                                     for r in chunk],
                                    sampling, progress=advance)
        except ContextLengthError as e:
            raise name_row(e, chunk, path) from None
        return [{"id": r.id, "prompt": r.text, "messages": r.messages, "sample": j,
                 "completion": c.text, "finish_reason": c.finish_reason,
                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.tokens}
                for r, cs in zip(chunk, outs) for j, c in enumerate(cs)]

    inputs = {"prompts": digest(path), "model": model_identity(cfg.model.name)}
    return run_model_stage(stage, config=stage_cfg, inputs=inputs,
                           items=rows, chunk_size=cfg.chunk_size, get_backend=get_backend,
                           work=work, total=len(rows) * sampling.n, unit="completions",
                           per_item=sampling.n, log=log)
