"""Shared pieces of the `cai` command line: the app, consoles, logging, backend loading."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align a language model to a written constitution with AI feedback.")
# Piped output (CI logs, tests) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
state = {"verbose": False}


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show tracebacks and library warnings.")):
    state["verbose"] = verbose
    from constitutional.train.distributed import is_main_process

    if not is_main_process():           # under `accelerate launch`, the main process reports
        out.quiet = err.quiet = True
    if not verbose:
        import logging
        import os
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")


def log(msg: str) -> None:
    """Progress messages (quiet on all but the main process under a launcher; see _main)."""
    err.print(msg, highlight=False)


def flags(**kw) -> dict:
    """CLI flags given by the user (not None), keyed by dotted config path."""
    return {k.replace("__", "."): v for k, v in kw.items() if v is not None}


def check_model(model_cfg) -> None:
    """Fail fast on an unknown model name, before any work starts."""
    if model_cfg.backend in ("transformers", "vllm"):     # `openai`: the server's model id
        from constitutional.models import resolve_model
        resolve_model(model_cfg.name, prepare=False)


def start_run(out_dir: Path, cfg, name: str = "config.yaml") -> None:
    from constitutional.config import dump_config
    from constitutional.jsonio import write_atomic
    from constitutional.train.distributed import is_main_process

    if is_main_process():               # under `accelerate launch`, one writer
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / name, dump_config(cfg))


def backend_loader(cfg, run_dir: Path):
    """Load the configured backend (once), logging every call to run_dir/calls.jsonl."""
    from constitutional.backends import load_backend
    from constitutional.calllog import LoggedBackend

    t0 = time.time()
    backend = load_backend(cfg.model, log=log)
    log(f"Loaded {cfg.model.name} ({cfg.model.backend}) in {time.time() - t0:.1f}s")
    return LoggedBackend(backend, run_dir / "calls.jsonl") if cfg.log_calls else backend


