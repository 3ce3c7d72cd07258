"""`cai critique`, `cai export`, `cai train-sft` and `cai sl-cai` (all of stage 1 at once)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import (app, backend_loader, check_model, flags, log, out,
                                       shortcuts, start_run)
from constitutional.stages.critique import CritiqueConfig, check_inputs
from constitutional.stages.sl_cai import SLCAIConfig
from constitutional.train.sft import SFTTrainConfig

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. sampling.top_p=0.9")


@app.command("critique")
@shortcuts(CritiqueConfig, {"--constitution": "constitution", "--prompts, -p": "prompts",
                            "--model, -m": "model.name", "--rounds": "rounds",
                            "--samples": "samples", "--max-tokens": "sampling.max_tokens",
                            "--temperature": "sampling.temperature", "--few-shot": "few_shot",
                            "--limit": "limit", "--seed": "sampling.seed"})
def critique_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    revision_only: bool = typer.Option(False, "--revision-only", help="Skip the critique."),
    critic: Optional[str] = typer.Option(None, "--critic", help="Model that writes the "
                                         "critiques and revisions (default: --model itself)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(2, "--show", help="Print this many chains at the end."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """Critique -> revision on red-team prompts; writes OUT/critique/output.jsonl."""
    from constitutional.config import load_config
    from constitutional.stages.critique import run_critique

    base = given | flags(mode="revision_only" if revision_only else None,
                         model__backend="fake" if dry_run else None)
    if critic:
        base |= {"critic.name": critic} | ({"critic.backend": "fake"} if dry_run else {})
    cfg = load_config(CritiqueConfig, config, overrides, base)
    check_inputs(cfg)
    start_run(out_dir, cfg, "critique.config.yaml")
    critic = (lambda: backend_loader(cfg.model_copy(update={"model": cfg.critic}), out_dir)) \
        if cfg.critic is not None else None
    result = run_critique(cfg, out_dir, lambda: backend_loader(cfg, out_dir), log=log,
                          get_critic=critic)
    critique_summary(result, show)


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


@app.command("export")
def export_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder with a finished critique and/or "
                             "label stage."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Default: RUN/export."),
    include_flagged: bool = typer.Option(False, "--include-flagged"),
    parquet: bool = typer.Option(True, "--parquet/--no-parquet"),
    save_to_disk: bool = typer.Option(False, "--save-to-disk", help="Also write each dataset "
                                      "as a `datasets.load_from_disk` folder (OUT/sft/, ...)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Also push the "
                                              "datasets (one config each) and the card to "
                                              "this hub dataset repo (needs a network and "
                                              "a token)."),
):
    """Write the run's data as HF datasets with a card: sft (messages), pairs (revision over
    original) and labelled (the AI-labelled pairs), each prompt/chosen/rejected as TRL reads."""
    from constitutional.export import export_run

    counts = export_run(run, out_dir, include_flagged, parquet, save_to_disk, push_to_hub)
    from constitutional.rundir import RunDir

    where = out_dir or RunDir(run).export
    parts = []
    if "critique" in counts:
        c = counts["critique"]
        parts.append(f"sft + pairs: {c['exported']} of {c['rows']} revisions")
    if "label" in counts:
        parts.append(f"labelled: {counts['label']['pairs']} pairs")
    out.print(f"exported {'; '.join(parts)} -> {where} (.jsonl"
              f"{', .parquet' if parquet else ''}{', folders' if save_to_disk else ''}, "
              "README.md)", highlight=False)


@app.command("train-sft")
@shortcuts(SFTTrainConfig, {"--revisions": "revisions", "--helpful": "helpful",
                            "--model, -m": "model.name", "--lora/--full": "lora",
                            "--epochs": "epochs", "--max-steps": "max_steps",
                            "--batch-size": "batch_size", "--grad-accum": "grad_accum",
                            "--lr": "learning_rate"})
def train_sft_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder; the model lands in "
                                 "OUT/sl_model/model."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """Fine-tune on (prompt, final revision) plus helpful answers: SL-CAI. --revisions
    defaults to OUT/critique/output.jsonl."""
    from constitutional.config import load_config
    from constitutional.rundir import RunDir
    from constitutional.train.sft import run_sft

    default = RunDir(out_dir).critique.output
    base = flags(revisions=str(default) if default.is_file() else None) | given
    cfg = load_config(SFTTrainConfig, config, overrides, base)
    check_model(cfg.model)
    start_run(out_dir, cfg, "sft.config.yaml")
    result = run_sft(cfg, out_dir, log)
    sft_summary(result)


def sft_summary(result) -> None:
    import json

    m = json.loads((result.output.parent / "manifest.json").read_text())
    state = "reused (unchanged)" if result.skipped else f"{result.seconds:.1f}s"
    out.print(f"SL-CAI model: {result.output} ({result.rows} examples, final train loss "
              f"{m.get('final_loss')}, {state})", highlight=False)


@app.command("sl-cai")
@shortcuts(SLCAIConfig, {"--constitution": "critique.constitution",
                         "--prompts, -p": "critique.prompts"})
def sl_cai_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe, e.g. "
                                          "configs/quickstart.yaml."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Helpful model and the "
                                        "model fine-tuned."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fake backend for generation."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """All of SL-CAI: critique -> revision, helpfulness mix, export, fine-tune, compare."""
    from constitutional.config import load_config
    from constitutional.stages.pipeline import RecipeConfig
    from constitutional.stages.sl_cai import run_sl_cai, set_model

    base = given | flags(critique__model__backend="fake" if dry_run else None)
    # A full recipe is accepted too (its RL sections are ignored here): see `cai run`.
    cfg = load_config(RecipeConfig, config, overrides, base)
    if model:
        set_model(cfg, model)
    check_inputs(cfg.critique)
    check_model(cfg.sft.model)
    start_run(out_dir, cfg, "sl_cai.config.yaml")

    def load(model_cfg):
        return backend_loader(cfg.critique.model_copy(update={"model": model_cfg}), out_dir)

    results = run_sl_cai(cfg, out_dir, load, log)
    sl_cai_summary(results, out_dir)


def revisions_kept(chains: list[dict]) -> str:
    """How many revisions go into SFT, and why the others were left out."""
    from collections import Counter

    from constitutional.stages.critique import BAD_FLAGS

    dropped = Counter(f for r in chains if not r["ok"]
                      for f in sorted(set(r["flags"]) & BAD_FLAGS))
    why = ", ".join(f"{k} {v}" for k, v in dropped.most_common()) or "none"
    return (f"SFT data: {sum(r['ok'] for r in chains)} of {len(chains)} revisions kept "
            f"(left out, by flag: {why})")


def sl_cai_summary(results: dict, run_dir: Path) -> None:
    from constitutional.artifacts import read_output

    chains = read_output(results["critique"].output)
    answers = {r["id"]: r for r in read_output(results["sl_answers"].output)} \
        if "sl_answers" in results else {}
    for r in [c for c in chains if c["sample"] == 0 and c["id"] in answers]:
        print_chain(r)
        out.print(f"[bold magenta]SL-CAI model:[/bold magenta] "
                  f"{escape(answers[r['id']]['completion'])}", highlight=False)
    critique_summary(results["critique"], 0)
    out.print(revisions_kept(chains), highlight=False)
    sft_summary(results["sl_model"])
    out.print(f"data: {run_dir / 'export'} | model: {results['sl_model'].output}",
              highlight=False)
