"""`cai run RECIPE`: every stage of a recipe in order, resumable, with a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from constitutional.cli.common import app, log, out
from constitutional.rundir import RunDir

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. rl.ppo.steps=4")


def _help() -> str:
    from constitutional.stages.registry import STAGES

    return ("Run a recipe's stages in order, each resumable, in one run folder. Stages: "
            f"{', '.join(STAGES)} (what each does: `cai stages`).")


@app.command("run", help=_help())
def run_cmd(
    config: Path = typer.Argument(..., help="Recipe YAML, e.g. configs/quickstart.yaml."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: "
                                           "runs/<recipe name>)."),
    start: Optional[str] = typer.Option(None, "--from", help="First stage to run (the ones "
                                        "before must be finished in the run folder)."),
    until: Optional[str] = typer.Option(None, "--until", help="Last stage to run."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The policy: the "
                                        "helpful model and the model fine-tuned."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fake backend for every generation "
                                 "and labeling stage (training still runs)."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    from constitutional.api import load_recipe, run_recipe

    cfg = load_recipe(config, overrides, model, dry_run)
    out_dir = out_dir or Path("runs") / config.stem
    results = run_recipe(cfg, out_dir, start=start, until=until, log=log)
    print_results(results, out_dir, cfg.show)


def print_results(results: list, out_dir: Path, show: int) -> None:
    """The stages' own summaries, the table of stages, and the verdict last."""
    stage_summaries({r.name: r for r in results}, out_dir, show)
    table = Table("stage", "rows", "time", "output")
    for r in results:
        table.add_row(r.name, str(r.rows), "reused" if r.skipped else f"{r.seconds:.1f}s",
                      str(r.output))
    out.print(table)
    m = RunDir(out_dir).rl.manifest()
    if any(r.name == "rl" for r in results) and m:
        if "reward_before" in m:
            judged = (m.get("inputs") or {}).get("reward") == "judge"
            reward = "the judge's reward" if judged else "preference-model reward"
            out.print(f"RL (PPO): {reward} on {m['eval_prompts']} held-out "
                      f"prompts {m['reward_before']:.3f} -> {m['reward_after']:.3f}, KL to the "
                      f"SL-CAI policy {m['kl_after']:.3f} nats (rl/eval.jsonl, rl/log.jsonl)",
                      highlight=False)
    by_name = {r.name: r for r in results}
    if "eval" in by_name:
        from constitutional.cli.eval_cmd import print_summary
        print_summary(by_name["eval"].output)
    if "report" in by_name:
        out.print(f"report -> {by_name['report'].output} (open it in a browser; "
                  f"{RunDir(out_dir).report_md} beside it)", highlight=False)
    if "eval" in by_name:
        from constitutional.cli.eval_cmd import print_verdict
        print_verdict(by_name["eval"].output)


def stage_summaries(by_name: dict, out_dir: Path, show: int) -> None:
    """What each stage's own command prints: chains with the SL-CAI answers, labelled pairs
    with every vote, the preference model's held-out accuracy."""
    from constitutional.cli.feedback import label_summary
    from constitutional.cli.sl_cai import sl_cai_summary

    if show and "critique" in by_name and "sl_answers" in by_name:
        sl_cai_summary(by_name, out_dir)
    if show and "labels" in by_name:
        label_summary(by_name["labels"], show)
    if "pm" in by_name:
        m = RunDir(out_dir).pm.manifest() or {}
        evals = ", ".join(f"epoch {e['epoch']:.0f}: {e['accuracy']:.3f}" for e in m["eval"])
        out.print(f"preference model: held-out accuracy {evals or '-'} "
                  f"({m['rows']} pairs)", highlight=False)


@app.command("stages")
def stages_cmd():
    """The stages a recipe can name, in registry order, with what each does."""
    from constitutional.stages.registry import describe

    for line in describe().splitlines():
        name, _, text = line.partition(": ")
        out.print(f"[bold]{name}[/bold]  {text}")
