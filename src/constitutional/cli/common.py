"""Shared pieces of the `cai` command line: the app, consoles, logging, backend loading."""

from __future__ import annotations

import sys
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
    from constitutional.models import check_model as check

    check(model_cfg)


def start_run(out_dir: Path, cfg, name: str = "config.yaml") -> None:
    from constitutional.rundir import RunDir

    RunDir(out_dir).save_config(cfg, name)


def backend_loader(cfg, run_dir: Path):
    """Load the configured backend (once), logging every call to run_dir/calls.jsonl."""
    from constitutional.backends import load_run_backend

    return load_run_backend(cfg.model, run_dir, cfg.log_calls, log)




def field_path(cls, path: str) -> list:
    """The pydantic FieldInfos along a dotted field path of a config class."""
    import typing

    infos = []
    for part in path.split("."):
        info = cls.model_fields[part]
        infos.append(info)
        args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
        cls = args[0] if args and isinstance(args[0], type) else info.annotation
    return infos


def field_help(infos: list) -> str:
    """A nested field's help: its section's description, then its own (`judge.name`: "The
    model that compares answers ... Built-in model name ...")."""
    parts = [i.description for i in infos[-2:] if i.description]
    return " ".join(p if p.endswith(".") else p + "." for p in parts)


def _flag_type(annotation):
    """The click type of a field: bool, int, float, or str (pydantic validates the rest)."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if args[0] in (bool, int, float) else str


def shortcuts(cls, table: dict[str, str]):
    """Add one option per `"--flag[/-f]": "dotted.field"` of `cls` to a command, typed and
    helped by the field itself (its description is the help: one place for it). The command
    receives `given`: {dotted field: value} for the flags the user passed, to lay over the
    config file like `key=value` overrides."""
    import functools
    import inspect
    from typing import Optional

    def decorate(fn):
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.name != "given"]
        names = {}
        for flag, path in table.items():
            infos = field_path(cls, path)
            name = "flag_" + path.replace(".", "__")
            names[name] = path
            decls = [d.strip() for d in flag.split(",")]
            params.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=field_help(infos)),
                annotation=Optional[_flag_type(infos[-1].annotation)]))

        @functools.wraps(fn)
        def command(**kw):
            given = {names[n]: kw.pop(n) for n in list(kw) if n in names}
            return fn(**kw, given={k: v for k, v in given.items() if v is not None})

        command.__signature__ = sig.replace(parameters=params)
        return command
    return decorate
