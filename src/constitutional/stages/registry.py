"""The stages a recipe can run: the one place a stage is added.

A stage is a module of stages/ with the contract of stages/base.py (`Section`, `run(cfg, run,
models)`, `FAKE`); adding one is its file plus one line here. The recipe's sections, its
allowed stage names, `--from` / `--until`, `--dry-run` and `cai run --help` all come from
this table. Modules are named, not imported, so `cai` starts without loading every stage's
config; `modules()` imports them when a recipe is read.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: dict[str, str | ModuleType] = {
    # Constitutional AI
    "sl-cai": "constitutional.stages.sl_cai",
    "pairs": "constitutional.stages.pairs",
    "label": "constitutional.stages.label",
    "pm": "constitutional.stages.pm",
    "rl": "constitutional.stages.rl",
    "eval": "constitutional.stages.eval",
    "report": "constitutional.stages.report",
    # SELF-ALIGN
    "self-instruct": "constitutional.stages.self_instruct",
    "redteam": "constitutional.stages.redteam",
    "self-align": "constitutional.stages.self_align",
    "engrave": "constitutional.stages.engrave",
    "verbose": "constitutional.stages.verbose",
}

# What a recipe runs when it names no stages: the paper's Constitutional AI pipeline.
DEFAULT_STAGES = ["sl-cai", "pairs", "label", "pm", "rl", "eval", "report"]
SELF_ALIGN_STAGES = ["self-instruct", "redteam", "self-align", "engrave", "verbose"]


def module(name: str) -> ModuleType:
    entry = STAGES[name]
    return importlib.import_module(entry) if isinstance(entry, str) else entry


def modules() -> dict[str, ModuleType]:
    return {name: module(name) for name in STAGES}


def describe() -> str:
    """One line per stage: its name and its `run` docstring's first line."""
    return "\n".join(f"{name}: {(mod.run.__doc__ or '').strip().splitlines()[0]}"
                     for name, mod in modules().items())
