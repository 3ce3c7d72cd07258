"""Stage `label`: AI feedback labels for the run's answer pairs (writes `label/`).

The labeling itself (principles drawn per pair, both orders, option probabilities from one
forward pass, soft labels) is `labeling.Labeler`; this module runs it over a pairs file as a
resumable stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import Field

from constitutional.artifacts import StageResult, model_identity, run_model_stage
from constitutional.comparisons import Comparison, load_comparisons
from constitutional.config import StrictModel, results_config
from constitutional.constitution import load_constitution
from constitutional.datasource import digest
from constitutional.labeling import LabelConfig, Labeler
from constitutional.rundir import RunDir
from constitutional.stages.base import require_sl_model


def run_label(cfg: LabelConfig, run_dir: str | Path, get_backend: Callable[[], object],
              log: Callable[[str], None] = print) -> StageResult:
    run = RunDir.of(run_dir)
    pairs_path = cfg.pairs or str(run.pairs.output)
    pairs, skipped = load_comparisons(pairs_path)
    stage = run.labels
    if skipped:
        log(f"{stage.name}: skipping {skipped} flagged pairs (identical or empty answers)")
    cpath, constitution = load_constitution(cfg.constitution)
    constitution.require("choice", str(cpath))
    labeler = Labeler(cfg, constitution)
    stage_cfg = results_config(cfg)
    def work(backend, chunk: list[Comparison], advance) -> list[dict]:
        missing = getattr(backend, "stats", {}).get("missing_options", 0)
        out = labeler.label(backend, chunk)
        advance(len(chunk))
        now = getattr(backend, "stats", {}).get("missing_options", 0)
        if now > missing:     # an option outside the server's top-k log-probabilities
            log(f"{stage.name}: {now - missing} options missing from the server's top-k; each "
                "got the k-th log-probability (an upper bound)")
        return out

    return run_model_stage(stage, config=stage_cfg,
                           inputs={"pairs": digest(pairs_path),
                                   "model": model_identity(cfg.model.name),
                                   "constitution": constitution.fingerprint()},
                           items=pairs, chunk_size=cfg.chunk_size, get_backend=get_backend,
                           work=work, total=len(pairs), unit="pairs", log=log)


# -- the recipe stage ------------------------------------------------------------------------

class Section(StrictModel):
    label: LabelConfig = Field(default_factory=LabelConfig)


FAKE = ("label.model",)


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """The feedback model labels each pair: soft labels from option probabilities (label/)."""
    require_sl_model(run)
    return [run_label(cfg.label, run, lambda: models.load(cfg.label.model), run.log)]
