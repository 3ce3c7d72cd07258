"""`cai critique`, `cai export`, `cai train-sft` and `cai sl-cai` (all of stage 1 at once)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import app, backend_loader, check_model, flags, log, out, start_run

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. sampling.top_p=0.9")


@app.command("critique")
def critique_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    constitution: Optional[str] = typer.Option(None, "--constitution", help="YAML, JSON or "
                                               "the CAI paper's prompts folder."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help="Red-team JSONL."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The helpful model."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Critique/revision rounds."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Chains per prompt."),
    revision_only: bool = typer.Option(False, "--revision-only", help="Skip the critique."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Cap per step."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    few_shot: Optional[int] = typer.Option(None, "--few-shot", help="Exemplars to show."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N prompts only."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(2, "--show", help="Print this many chains at the end."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    """Critique -> revision on red-team prompts; writes OUT/critique/output.jsonl."""
    from constitutional.config import load_config
    from constitutional.stages.critique import CritiqueConfig, run_critique

    base = flags(constitution=constitution, prompts=prompts, model__name=model, rounds=rounds,
                 samples=samples, sampling__max_tokens=max_tokens,
                 sampling__temperature=temperature, few_shot=few_shot, limit=limit,
                 sampling__seed=seed, mode="revision_only" if revision_only else None,
                 model__backend="fake" if dry_run else None)
    cfg = load_config(CritiqueConfig, config, overrides, base)
    _check_inputs(cfg)
    start_run(out_dir, cfg, "critique.config.yaml")
    result = run_critique(cfg, out_dir, lambda: backend_loader(cfg, out_dir), log=log)
    critique_summary(result, show)


def _check_inputs(cfg) -> None:
    """Validate every input before a model is loaded or a file written."""
    from constitutional.constitution import load_constitution
    from constitutional.prompts_io import load_prompts

    cpath, c = load_constitution(cfg.constitution)
    c.require("critique_revision", str(cpath))
    load_prompts(cfg.prompts, cfg.limit)
    check_model(cfg.model)


def print_chain(r: dict) -> None:
    out.rule(f"[bold]{r['id']}[/bold] sample {r['sample']} "
             f"({'ok' if r['ok'] else 'flagged: ' + ', '.join(r['flags'])})")
    out.print(f"[bold cyan]prompt:[/bold cyan] {escape(r['prompt'])}", highlight=False)
    out.print(f"[bold red]original answer:[/bold red] {escape(r['initial_response'])}", highlight=False)
    for rd in r["rounds"]:
        if "critique" in rd:
            out.print(f"[bold yellow]critique {rd['round']} ({rd['principle']}):[/bold yellow] "
                      f"{escape(rd['critique'])}", highlight=False)
        out.print(f"[bold green]revision {rd['round']}:[/bold green] {escape(rd['revision'])}",
                  highlight=False)


def critique_summary(result, show: int) -> None:
    from constitutional.artifacts import read_output

    rows = read_output(result.output)
    for r in rows[:show]:
        print_chain(r)
    flagged = Counter(f for r in rows for f in r["flags"])
    steps = sum(1 + sum(("critique" in rd) + 1 for rd in r["rounds"]) for r in rows)
    rounds = sum(len(r["rounds"]) for r in rows)
    table = Table("stage", "chains", "ok", "flags", "rounds", "time", "rounds/s", "output")
    fast = result.seconds > 0 and not result.skipped
    table.add_row(result.name, str(len(rows)), str(sum(r["ok"] for r in rows)),
                  ", ".join(f"{k} {v}" for k, v in flagged.most_common()) or "-",
                  f"{rounds} ({steps} steps)",
                  "reused (unchanged)" if result.skipped else f"{result.seconds:.1f}s",
                  f"{rounds / result.seconds:.2f}" if fast else "-", str(result.output))
    out.print(table)
