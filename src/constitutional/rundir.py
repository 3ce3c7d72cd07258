"""The run folder: every path a run writes or reads, named once.

    RUN/recipe.yaml (or config.yaml)   the resolved config of the last invocation
    RUN/calls.jsonl                    every model call
    RUN/critique/ helpful/ refusals/ export/ sl_model/ sl_answers/      stage sl-cai
    RUN/pairs/ label/ pm/ rl/                                 stages pairs, label, pm, rl
    RUN/eval/                                                 stage eval (sub-stages inside)
    RUN/report.md, report.html                                stage report
    RUN/self_instruct/ redteam_topics/ redteam/ instructions/ self_align/ engrave/
        verbose_answers/ verbose/ selfalign_samples/          the SELF-ALIGN stages
    RUN/constitution_eval/ constitution_infer/                the constitution workbench
    RUN/blind/                                                people's blind read of answers

A stage's folder is named for the stage (`label/` for stage label, `engrave/`, `verbose/`); a
stage made of several steps (sl-cai, redteam, verbose) has a folder per step. No other module
joins run paths by hand: a stage asks this object for the folder of the step
it runs (a `StageDir`, with its manifest, shards and output) or for a named artifact, and gets
the folders of its inputs the same way. A folder layout change is a change here alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from constitutional.artifacts import MANIFEST, StageDir

CALLS = "calls.jsonl"
# The top folders in the order a recipe writes them (the report's pipeline table follows it).
FOLDER_ORDER = ["critique", "helpful", "refusals", "export", "sl_model", "sl_answers", "pairs", "label",
                "pm", "rl", "eval", "self_instruct", "redteam_topics", "redteam",
                "instructions", "self_align", "engrave", "verbose_answers", "verbose",
                "selfalign_samples", "constitution_eval", "constitution_infer"]


def slug(text: str) -> str:
    """A model label or file stem as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


class RunDir:
    """One run folder, and the log its stages write progress lines to. `RunDir.of(x)`
    accepts a RunDir or a path."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log

    @classmethod
    def of(cls, run: "RunDir | str | Path") -> "RunDir":
        return run if isinstance(run, RunDir) else cls(run)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def stage(self, name: str) -> StageDir:
        """The folder of a step by its folder name (for `cai generate --stage-name`-style
        commands whose folder the user names)."""
        return StageDir(self.root, name)

    # -- files at the top -------------------------------------------------------------------
    @property
    def calls(self) -> Path:
        return self.root / CALLS

    def config_file(self, name: str = "config.yaml") -> Path:
        return self.root / name

    def save_config(self, cfg, name: str = "config.yaml") -> None:
        """The config a command ran with, beside its outputs (one writer under a launcher)."""
        from constitutional.config import dump_config
        from constitutional.jsonio import write_atomic
        from constitutional.train.distributed import is_main_process

        if is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.config_file(name), dump_config(cfg))

    def inputs(self, name: str) -> Path:
        """Rows handed to a stage from Python (the API), kept so the run can resume."""
        return self.root / "inputs" / f"{name}.jsonl"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # -- SL-CAI -------------------------------------------------------------------------------
    @property
    def critique(self) -> StageDir:
        return StageDir(self.root, "critique")

    @property
    def helpful(self) -> StageDir:
        return StageDir(self.root, "helpful")

    @property
    def refusals(self) -> StageDir:
        return StageDir(self.root, "refusals")

    @property
    def generate(self) -> StageDir:
        return StageDir(self.root, "generate")

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def sl(self) -> StageDir:
        return StageDir(self.root, "sl_model")

    @property
    def sl_model(self) -> Path:
        return self.sl.model

    @property
    def sl_answers(self) -> StageDir:
        return StageDir(self.root, "sl_answers")

    # -- RL-CAI -------------------------------------------------------------------------------
    @property
    def pairs(self) -> StageDir:
        return StageDir(self.root, "pairs")

    @property
    def labels(self) -> StageDir:
        return StageDir(self.root, "label")

    @property
    def constitution_eval(self) -> StageDir:
        """`cai constitution evaluate`: every pair under every principle; results.json."""
        return StageDir(self.root, "constitution_eval")

    @property
    def constitution_infer(self) -> Path:
        """`cai constitution infer`: results.json, constitution.yaml and its steps' folders."""
        return self.root / "constitution_infer"

    @property
    def infer_proposals(self) -> StageDir:
        return StageDir(self.root, "constitution_infer/proposals")

    @property
    def infer_tests(self) -> StageDir:
        return StageDir(self.root, "constitution_infer/tests")

    def infer_heldout(self, which: str) -> StageDir:
        return StageDir(self.root, f"constitution_infer/heldout/{slug(which)}")

    @property
    def pm(self) -> StageDir:
        return StageDir(self.root, "pm")

    @property
    def pm_model(self) -> Path:
        return self.pm.model

    @property
    def rl(self) -> StageDir:
        return StageDir(self.root, "rl")

    @property
    def rl_model(self) -> Path:
        return self.rl.model

    @property
    def rl_snapshots(self) -> Path:
        return self.rl.path / "snapshots"

    # -- eval ---------------------------------------------------------------------------------
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_summary(self) -> Path:
        return self.eval / "summary.json"

    def eval_answers(self, model_title: str, axis: str) -> StageDir:
        return StageDir(self.root, f"eval/answers/{slug(model_title)}/{axis}")

    def eval_mc(self, benchmark_stem: str, model_title: str) -> StageDir:
        return StageDir(self.root, f"eval/mc/{slug(benchmark_stem)}/{slug(model_title)}")

    @property
    def eval_ablation(self) -> StageDir:
        return StageDir(self.root, "eval/ablation_revision_only")

    def eval_judge(self, axis: str) -> StageDir:
        return StageDir(self.root, f"eval/judge/{axis}")

    @property
    def eval_evasiveness(self) -> StageDir:
        return StageDir(self.root, "eval/evasiveness")

    @property
    def eval_feedback_accuracy(self) -> StageDir:
        return StageDir(self.root, "eval/feedback_accuracy")

    @property
    def eval_pm_scores(self) -> StageDir:
        return StageDir(self.root, "eval/pm_scores")

    def eval_file(self, name: str) -> Path:
        """A file the eval stage writes at its top (frontier.csv, frontier.png, ...)."""
        return self.eval / name

    @property
    def blind(self) -> Path:
        """`cai eval blind-sheet`: the readers' sheet, its key and (after blind-score) the
        readers' results."""
        return self.root / "blind"

    @property
    def feedback_accuracy(self) -> Path:
        """`cai eval feedback-accuracy --out RUN` writes its results here."""
        return self.root / "feedback_accuracy"

    # -- SELF-ALIGN ---------------------------------------------------------------------------
    @property
    def self_instruct(self) -> StageDir:
        return StageDir(self.root, "self_instruct")

    @property
    def redteam_topics(self) -> StageDir:
        return StageDir(self.root, "redteam_topics")

    @property
    def redteam(self) -> StageDir:
        return StageDir(self.root, "redteam")

    @property
    def instructions(self) -> StageDir:
        return StageDir(self.root, "instructions")

    @property
    def self_align(self) -> StageDir:
        return StageDir(self.root, "self_align")

    @property
    def engraved(self) -> StageDir:
        return StageDir(self.root, "engrave")

    @property
    def engraved_model(self) -> Path:
        return self.engraved.model

    @property
    def verbose_answers(self) -> StageDir:
        return StageDir(self.root, "verbose_answers")

    @property
    def verbose(self) -> StageDir:
        return StageDir(self.root, "verbose")

    @property
    def verbose_model(self) -> Path:
        return self.verbose.model

    def selfalign_samples(self, tag: str) -> StageDir:
        return StageDir(self.root, f"selfalign_samples/{tag}")

    def relative(self, path: Path) -> str:
        """A path of this run as the report links it (relative to the run folder)."""
        return path.relative_to(self.root).as_posix()

    # -- what exists --------------------------------------------------------------------------
    def stage_folders(self) -> list[Path]:
        """Every folder of this run that holds a stage manifest, sorted by path."""
        return sorted(p.parent for p in self.root.rglob(MANIFEST))
