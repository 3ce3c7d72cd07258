"""The `cai` command line.

Bad input prints one line (`error: file:line: field: what is wrong`) and exits with code 2;
`--verbose` adds the traceback. Heavy libraries are imported inside commands, so `cai --help`
is instant.
"""

from __future__ import annotations

import sys
import traceback

from constitutional.cli import (basic, constitution_cmd, eval_cmd, feedback,  # noqa: F401
                                run_cmd, serve_cmd, sl_cai)
from constitutional.cli.common import app, err, state
from constitutional.errors import InputError


def main() -> None:
    try:
        app(standalone_mode=False)
    except InputError as e:
        if state["verbose"]:
            traceback.print_exc()
        from constitutional.train.distributed import is_main_process

        # Plain print: one unwrapped line, and no markup parsing of user text. Bad input is
        # the same for every launched process, so the main process alone says it.
        if is_main_process() or state["verbose"]:
            print(f"error: {e}", file=sys.stderr)
        else:
            # The launcher ends every process once one exits: give the main process the
            # moment it needs to say the error (a loaded machine lost it otherwise).
            import time
            time.sleep(3)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as e:  # usage errors and the like
        import typer

        # typer 0.29 parses with its own copy of click: its usage errors derive from
        # typer.TyperException, not from the click package's classes.
        if isinstance(e, typer.Abort):
            sys.exit(130)
        if isinstance(e, typer.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):
            e.show()
            sys.exit(2)
        raise

