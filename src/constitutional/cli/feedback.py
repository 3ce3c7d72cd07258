"""`cai pairs`, `cai label`, `cai train-pm` and `cai score`: RL-CAI's data and preference model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import (app, backend_loader, check_model, flags, log, out,
                                       shortcuts, start_run)
from constitutional.labeling import LabelConfig
from constitutional.stages.pairs import PairsConfig
from constitutional.train.pm import PMTrainConfig

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. sampling.top_p=0.9")


def default_policy(out_dir: Path) -> str | None:
    from constitutional.rundir import RunDir

    sl = RunDir(out_dir).sl_model
    return str(sl) if sl.is_dir() else None


@app.command("pairs")
@shortcuts(PairsConfig, {"--model, -m": "model.name", "--prompts, -p": "prompts",
                         "--limit": "limit", "--temperature": "sampling.temperature",
                         "--max-tokens": "sampling.max_tokens"})
def pairs_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """Two answers per prompt from the policy; writes OUT/pairs/output.jsonl. The policy
    defaults to OUT/sl_model/model when it is there."""
    from collections import Counter

    from constitutional.artifacts import read_output
    from constitutional.config import load_config
    from constitutional.prompts_io import load_prompts
    from constitutional.stages.pairs import run_pairs

    base = flags(model__name=default_policy(out_dir),
                 model__backend="fake" if dry_run else None) | given
    cfg = load_config(PairsConfig, config, overrides, base)
    load_prompts(cfg.prompts, cfg.limit)
    check_model(cfg.model)
    start_run(out_dir, cfg, "pairs.config.yaml")
    result = run_pairs(cfg, out_dir, lambda: backend_loader(cfg, out_dir), log)
    rows = read_output(result.output)
    flagged = Counter(f for r in rows for f in r["flags"])
    out.print(f"pairs: {len(rows)} prompts, {sum(r['ok'] for r in rows)} usable pairs, "
              f"{sum(r['resampled'] > 0 for r in rows)} resampled, flagged: "
              f"{dict(flagged) or 'none'} -> {result.output}", highlight=False)


@app.command("label")
@shortcuts(LabelConfig, {"--pairs": "pairs", "--feedback-model, -m": "model.name",
                         "--constitution": "constitution", "--principles, -k": "principles",
                         "--debias/--no-debias": "debias", "--cot/--no-cot": "cot",
                         "--few-shot": "few_shot", "--format": "prompt_format",
                         "--calibrate/--no-calibrate": "calibrate"})
def label_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(3, "--show", help="Print this many labelled pairs."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """AI feedback labels from option probabilities; writes OUT/label/output.jsonl."""
    from constitutional.comparisons import load_comparisons
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution
    from constitutional.stages.label import run_label

    base = given | flags(model__backend="fake" if dry_run else None)
    cfg = load_config(LabelConfig, config, overrides, base)
    from constitutional.rundir import RunDir

    load_comparisons(cfg.pairs or RunDir(out_dir).pairs.output)
    cpath, c = load_constitution(cfg.constitution)
    c.require("choice", str(cpath))
    check_model(cfg.model)
    start_run(out_dir, cfg, "label.config.yaml")
    result = run_label(cfg, out_dir, lambda: backend_loader(cfg, out_dir), log)
    label_summary(result, show)


def label_summary(result, show: int) -> None:
    from constitutional.artifacts import read_output

    rows = read_output(result.output)
    for r in rows[:show]:
        out.rule(f"[bold]{escape(r['id'])}[/bold]  label p(A better) = {r['label']:.3f}")
        out.print(f"[bold cyan]prompt:[/bold cyan] {escape(r['conversation'][-1][1])}",
                  highlight=False)
        out.print(f"[bold]A:[/bold] {escape(r['response_a'])}", highlight=False)
        out.print(f"[bold]B:[/bold] {escape(r['response_b'])}", highlight=False)
        table = Table("principle", "order", "log p(A), log p(B)", "p(A better)")
        for v in r["votes"]:
            table.add_row(v["principle"], v["order"],
                          ", ".join(f"{x:.2f}" for x in v["logprobs"]), f"{v['p_first']:.3f}")
        out.print(table)
    dis = [r["disagree"] for r in rows if r["disagree"] is not None]
    speed = f", {len(rows) / result.seconds:.1f} pairs/s" if result.seconds and \
        not result.skipped else ""
    out.print(f"labels: {len(rows)} pairs ({rows[0]['method'] if rows else '-'}), mean label "
              f"{sum(r['label'] for r in rows) / max(1, len(rows)):.3f}, orders disagree on "
              f"{(sum(dis) / len(dis) if dis else 0):.0%}{speed} -> {result.output}",
              highlight=False)


@app.command("train-pm")
@shortcuts(PMTrainConfig, {"--labels": "labels", "--model, -m": "model.name",
                           "--helpful": "helpful", "--lora/--full": "lora",
                           "--epochs": "epochs", "--max-steps": "max_steps",
                           "--batch-size": "batch_size", "--lr": "learning_rate"})
def train_pm_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder; the PM lands in "
                                 "OUT/pm/model."),
    pmp: Optional[str] = typer.Option(None, "--pmp", help="PMP data: pretrain on it first."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: Optional[List[str]] = OVERRIDES,
    given: dict = None,
):
    """Train the preference model on soft AI labels (+ helpfulness comparisons, + PMP)."""
    from constitutional.config import load_config
    from constitutional.train.pm import build_rows, run_pm
    from constitutional.train.pm_data import pmp_examples

    base = dict(given)
    if pmp:
        base["pmp"] = {"data": pmp}
    cfg = load_config(PMTrainConfig, config, overrides, base)
    from constitutional.rundir import RunDir

    build_rows(cfg, cfg.labels or str(RunDir(out_dir).labels.output))  # fail before work
    if cfg.pmp:
        pmp_examples(cfg.pmp.data)
    check_model(cfg.model)
    start_run(out_dir, cfg, "pm.config.yaml")
    result = run_pm(cfg, out_dir, log)
    m = json.loads((result.output.parent / "manifest.json").read_text())
    evals = ", ".join(f"epoch {e['epoch']:.0f}: {e['accuracy']:.3f}" for e in m.get("eval", []))
    state = "reused (unchanged)" if result.skipped else f"{result.seconds:.1f}s"
    out.print(f"preference model: {result.output} ({result.rows} pairs, final train loss "
              f"{m.get('final_loss')}, held-out accuracy {evals or '-'}, {state})",
              highlight=False)


@app.command("score")
def score_cmd(
    pm: Path = typer.Option(..., "--pm", help="Preference model folder (OUT/pm/model)."),
    input_path: Path = typer.Option(..., "--input", "-i", help="JSONL with `messages` or "
                                    "`prompt`, and `response` (or `completion`)."),
    output: Path = typer.Option(..., "--output", help="Rows with a `score` added."),
):
    """Score (prompt, answer) rows with a preference model."""
    from constitutional.errors import InputError
    from constitutional.datasource import read_rows
    from constitutional.jsonio import write_jsonl_atomic
    from constitutional.train.pm import PreferenceModel

    rows, convs, answers = [], [], []
    for line, r in read_rows(input_path):
        answer = r.get("response", r.get("completion"))
        if not isinstance(answer, str):
            raise InputError("missing", path=str(input_path), line=line, field="response")
        msgs = r.get("messages") or ([{"role": "user", "content": r["prompt"]}]
                                     if isinstance(r.get("prompt"), str) else None)
        if not msgs:
            raise InputError("missing", path=str(input_path), line=line, field="prompt")
        rows.append(r)
        convs.append(msgs)
        answers.append(answer)
    if not pm.is_dir():
        raise InputError("not a model folder", path=str(pm))
    scores = PreferenceModel(pm).score(convs, answers)
    write_jsonl_atomic(output, [{**r, "score": s} for r, s in zip(rows, scores)])
    out.print(f"scored {len(rows)} rows -> {output} (mean {sum(scores) / len(scores):.3f})",
              highlight=False)
