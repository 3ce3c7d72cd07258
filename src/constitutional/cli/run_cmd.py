"""`cai run RECIPE`: every stage of a recipe in order, resumable, with a summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from constitutional.cli.common import app, backend_loader, check_model, flags, log, out, start_run

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. rl.ppo.steps=4")


@app.command("run")
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
    """Run a recipe: sl-cai -> pairs -> label -> pm -> rl -> eval -> report, each stage
    resumable."""
    from constitutional.config import load_config
    from constitutional.stages.pipeline import RecipeConfig, run_recipe, select
    from constitutional.stages.sl_cai import set_model

    fake = "fake" if dry_run else None
    cfg = load_config(RecipeConfig, config, overrides,
                      flags(critique__model__backend=fake, pairs__model__backend=fake,
                            label__model__backend=fake, eval__judge__backend=fake,
                            eval__answer_model__backend=fake,
                            selfalign__model__backend=fake))
    if model:
        set_model(cfg, model)
    for writer in (cfg.critique.critic, cfg.selfalign.feedback):
        if dry_run and writer is not None:
            writer.backend = "fake"
    select(cfg.stages, start, until)
    from constitutional.cli.sl_cai import _check_inputs
    _check_inputs(cfg.critique)
    for m in (cfg.sft.model, cfg.label.model, cfg.pm.model) + \
            ((cfg.critique.critic,) if cfg.critique.critic else ()) + \
            ((cfg.selfalign.feedback,) if cfg.selfalign.feedback and "self-align" in
             cfg.stages else ()) + \
            ((cfg.eval.judge,) if "eval" in cfg.stages else ()):
        check_model(m)
    out_dir = out_dir or Path("runs") / config.stem
    start_run(out_dir, cfg, "recipe.yaml")

    def load(model_cfg):
        return backend_loader(cfg.critique.model_copy(update={"model": model_cfg}), out_dir)

    results = run_recipe(cfg, out_dir, load, log, start, until)
    stage_summaries({r.name: r for r in results}, out_dir, cfg.show)
    table = Table("stage", "rows", "time", "output")
    for r in results:
        table.add_row(r.name, str(r.rows), "reused" if r.skipped else f"{r.seconds:.1f}s",
                      str(r.output))
    out.print(table)
    rl = out_dir / "rl" / "manifest.json"
    if any(r.name == "rl" for r in results) and rl.is_file():
        m = json.loads(rl.read_text())
        if "reward_before" in m:
            out.print(f"RL (PPO): preference-model reward on {m['eval_prompts']} held-out "
                      f"prompts {m['reward_before']:.3f} -> {m['reward_after']:.3f}, KL to the "
                      f"SL-CAI policy {m['kl_after']:.3f} nats (rl/eval.jsonl, rl/log.jsonl)",
                      highlight=False)
    by_name = {r.name: r for r in results}
    if "eval" in by_name:
        from constitutional.cli.eval_cmd import print_summary
        print_summary(by_name["eval"].output)
    if "report" in by_name:
        out.print(f"report -> {by_name['report'].output} (open it in a browser; "
                  f"{out_dir / 'report.md'} beside it)", highlight=False)
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
        m = json.loads((out_dir / "pm" / "manifest.json").read_text())
        evals = ", ".join(f"epoch {e['epoch']:.0f}: {e['accuracy']:.3f}" for e in m["eval"])
        out.print(f"preference model: held-out accuracy {evals or '-'} "
                  f"({m['rows']} pairs)", highlight=False)
