"""`cai constitution show|validate`: read a constitution in any supported format and check it."""

from __future__ import annotations

import typer
from rich.table import Table

from constitutional.cli.common import app, out

constitution_app = typer.Typer(no_args_is_help=True, help="Show or check a constitution "
                               "(our YAML, the open recipe's JSON, or the CAI paper's prompts).")
app.add_typer(constitution_app, name="constitution")

SOURCE_HELP = "A YAML file, bundled:harmless, a JSON constitution, or the CAI paper's prompts/ folder."


@constitution_app.command("validate")
def validate_cmd(source: str = typer.Argument(..., help=SOURCE_HELP)):
    """Check a constitution; exit 0 with a one-line summary, or 2 with the exact problem."""
    from constitutional.constitution import load_constitution

    path, c = load_constitution(source)
    print(f"ok: {path}: {_counts(c)}")


@constitution_app.command("show")
def show_cmd(source: str = typer.Argument(..., help=SOURCE_HELP),
             as_yaml: bool = typer.Option(False, "--yaml", help="Print the whole constitution "
                                          "as our YAML (to convert an imported one).")):
    """Print a constitution's principles (or, with --yaml, all of it in our format)."""
    from constitutional.constitution import load_constitution, to_yaml

    path, c = load_constitution(source)
    if as_yaml:
        print(to_yaml(c), end="")
        return
    out.print(f"[bold]{c.name}[/bold] v{c.version}: {_counts(c)}", highlight=False)
    if c.description:
        out.print(c.description, highlight=False)
    if c.critique_revision:
        table = Table("name", "critique request", "revision request", title="critique/revision",
                      show_lines=True)
        for p in c.critique_revision:
            table.add_row(p.name, p.critique, p.revision)
        out.print(table)
    if c.choice:
        table = Table("name", "choice principle", title="choice principles")
        for p in c.choice:
            table.add_row(p.name, p.text)
        out.print(table)
    if c.self_align:
        table = Table("#", "name", "principle", title="SELF-ALIGN principles")
        for i, p in enumerate(c.self_align.principles):
            table.add_row(str(i + 1), p.name, p.text)
        out.print(table)


def _counts(c) -> str:
    ex = c.exemplars
    return (f"{len(c.critique_revision)} critique/revision pairs, {len(c.choice)} choice "
            f"principles, exemplars: {len(ex.critique_revision)} critique/revision, "
            f"{len(ex.choice)} choice, {len(ex.choice_cot)} chain-of-thought" +
            (f"; SELF-ALIGN: {len(c.self_align.principles)} principles, "
             f"{len(c.self_align.exemplars)} exemplars" if c.self_align else ""))
