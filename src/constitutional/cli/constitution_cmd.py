"""`cai constitution show|validate|evaluate|infer`: read a constitution in any supported format,
check it, measure which of its choice principles the feedback model applies, and infer one
from preference data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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


@constitution_app.command("evaluate")
def evaluate_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    data: str = typer.Option(..., "--data", "-d", help="Human-labelled pairs (HHH, HH, TRL "
                             "preference rows; any source `cai label` reads)."),
    model: str = typer.Option(None, "--model", "-m", help="The feedback model (default: the "
                              "built-in qwen2.5-coder-1.5b)."),
    out_dir: Path = typer.Option(None, "--out", "-o", help="Run folder (resumable; default "
                                 "runs/constitution-<name>)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N pairs only."),
    select: Optional[int] = typer.Option(None, "--select", help="Also write a constitution "
                                         "with the N principles that help most."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Label config YAML "
                                          "(format, layout, few-shot, calibration)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides of "
                                                    "the label config"),
):
    """Which choice principles the feedback model applies: per-principle accuracy, position
    consistency, calibration and disagreement; the ensemble's accuracy by K; leave-one-out."""
    from constitutional.cli.common import backend_loader, check_model, flags, log
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution, to_yaml
    from constitutional.evals.principles import evaluate_constitution, select as best
    from constitutional.evals.principles import selected_constitution
    from constitutional.jsonio import write_atomic
    from constitutional.labeling import LabelConfig
    from constitutional.models import DEFAULT_FEEDBACK_MODEL
    from constitutional.rundir import RunDir, slug

    _, c = load_constitution(source)
    c.require("choice", source)
    cfg = load_config(LabelConfig, config, overrides, flags(
        constitution=source, model__name=model or DEFAULT_FEEDBACK_MODEL,
        model__backend="fake" if dry_run else None))
    check_model(cfg.model)
    run = RunDir(out_dir or Path("runs") / f"constitution-{slug(c.name)}")
    run.save_config(cfg, "constitution_eval.config.yaml")
    r = evaluate_constitution(cfg, data, run, lambda: backend_loader(cfg, run.root), log, limit)
    table = Table("principle", "accuracy", "95% CI", "position consistency", "ECE",
                  "disagrees w/ ensemble", "leave-one-out: accuracy", "p(preferred)",
                  title=f"{r['constitution']} on {r['pairs']} pairs, {r['model']}")
    for t in r["principles"]:
        pc = t["position_consistency"]
        table.add_row(t["principle"], f"{t['accuracy']:.3f}",
                      f"{t['ci95'][0]:.3f}-{t['ci95'][1]:.3f}", "-" if pc is None else f"{pc:.2f}",
                      f"{t['ece']:.3f}", f"{t['disagrees_with_ensemble']:.2f}",
                      f"{t['leave_one_out']:+.3f}", f"{t['leave_one_out_p']:+.4f}")
    out.print(table)
    curve = Table("K", "accuracy", "95% CI", title="ensemble of K principles per pair")
    for p in r["k_curve"]:
        curve.add_row(str(p["k"]), f"{p['accuracy']:.3f}",
                      f"{p['ci95'][0]:.3f}-{p['ci95'][1]:.3f}")
    out.print(curve)
    folder = run.constitution_eval.path
    if select:
        keep = best(r["principles"], select)
        path = folder / f"selected-{select}.yaml"
        write_atomic(path, to_yaml(selected_constitution(source, keep)))
        out.print(f"selected {', '.join(keep)} -> {path}", highlight=False)
    out.print(f"results -> {folder / 'results.json'}, plot -> {folder / 'k_curve.png'} "
              "(`cai report` adds a section)", highlight=False)


@constitution_app.command("infer")
def infer_cmd(
    pairs: str = typer.Option(..., "--pairs", "-p", help="Pairs with known preferences "
                              "(chosen/rejected, better/worse, HH; any source `cai label` "
                              "reads)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    model: str = typer.Option(None, "--model", "-m", help="The feedback model (default: the "
                              "built-in qwen2.5-coder-1.5b)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Infer config YAML "
                                          "(held_out, keep, merge_threshold, label: ...)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides of "
                                                    "the infer config"),
):
    """An inverse constitution: principles that explain the preferences in --pairs, tested by
    how well each alone reconstructs them, checked on held-out pairs against the default
    constitution and no principle; writes RUN/constitution_infer/constitution.yaml."""
    from constitutional.cli.common import backend_loader, check_model, flags, log
    from constitutional.config import load_config
    from constitutional.evals.inverse import InferConfig, infer_constitution
    from constitutional.rundir import RunDir

    cfg = load_config(InferConfig, config, overrides, flags(
        model__name=model, model__backend="fake" if dry_run else None))
    check_model(cfg.model)
    run = RunDir(out_dir)
    run.save_config(cfg, "constitution_infer.config.yaml")
    r = infer_constitution(cfg, pairs, run, lambda: backend_loader(cfg, run.root), log)
    table = Table("name", "rule: choose the response that ...", "proposed", "accuracy",
                  "95% CI", "position consistency", "kept",
                  title=f"{r['merged']} rules from {r['rules']} proposals on "
                  f"{r['proposed_from']} pairs; reconstruction of {r['tested_on']} held-in "
                  f"preferences, {r['model']}")
    for c in r["candidates"]:
        pc = c["position_consistency"]
        table.add_row(c["name"], c["text"], str(c["support"]), f"{c['accuracy']:.3f}",
                      f"{c['ci95'][0]:.3f}-{c['ci95'][1]:.3f}",
                      "-" if pc is None else f"{pc:.2f}", "yes" if c["name"] in r["kept"] else "")
    out.print(table)
    check = Table("labelled under", "principles", "accuracy", "95% CI",
                  title=f"held-out check: {r['held_out']} pairs, {r['principles_per_pair']} "
                  "principles per pair, both orders")
    for which, c in r["held_out_check"].items():
        check.add_row(f"{which} ({c['constitution']})", str(c["principles"]),
                      f"{c['accuracy']:.3f}", f"{c['ci95'][0]:.3f}-{c['ci95'][1]:.3f}")
    out.print(check)
    folder = run.constitution_infer
    out.print(f"constitution -> {r['constitution']} (`cai constitution validate` it; any "
              f"--constitution takes it), results -> {folder / 'results.json'}",
              highlight=False)
