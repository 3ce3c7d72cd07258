"""`cai pairs`, `cai label`, `cai train-pm`, `cai score` and `cai eval feedback-accuracy`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import app, backend_loader, check_model, flags, log, out, start_run

OVERRIDES = typer.Argument(None, help="key.path=value overrides, e.g. sampling.top_p=0.9")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluations.")
app.add_typer(eval_app, name="eval")


def default_policy(out_dir: Path) -> str | None:
    sl = out_dir / "sl_model" / "model"
    return str(sl) if sl.is_dir() else None


@app.command("pairs")
def pairs_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The policy (default: "
                                        "OUT/sl_model/model if present, else smollm2-135m)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    """Two answers per prompt from the policy; writes OUT/pairs/output.jsonl."""
    from collections import Counter

    from constitutional.artifacts import read_output
    from constitutional.config import load_config
    from constitutional.prompts_io import load_prompts
    from constitutional.stages.pairs import PairsConfig, run_pairs

    base = flags(model__name=model or default_policy(out_dir), prompts=prompts, limit=limit,
                 sampling__temperature=temperature, sampling__max_tokens=max_tokens,
                 model__backend="fake" if dry_run else None)
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
def label_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable)."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="Pairs to label (default: "
                                        "OUT/pairs/output.jsonl)."),
    model: Optional[str] = typer.Option(None, "--feedback-model", "-m"),
    constitution: Optional[str] = typer.Option(None, "--constitution"),
    principles: Optional[int] = typer.Option(None, "--principles", "-k", help="Choice "
                                             "principles per pair (ensemble)."),
    debias: Optional[bool] = typer.Option(None, "--debias/--no-debias", help="Both orders."),
    cot: Optional[bool] = typer.Option(None, "--cot/--no-cot", help="Chain of thought."),
    few_shot: Optional[int] = typer.Option(None, "--few-shot"),
    prompt_format: Optional[str] = typer.Option(None, "--format", help="text | chat"),
    calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    show: int = typer.Option(3, "--show", help="Print this many labelled pairs."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    """AI feedback labels from option probabilities; writes OUT/labels/output.jsonl."""
    from constitutional.comparisons import load_comparisons
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution
    from constitutional.stages.label import LabelConfig, run_label

    base = flags(pairs=pairs, model__name=model, constitution=constitution,
                 principles=principles, debias=debias, cot=cot, few_shot=few_shot,
                 prompt_format=prompt_format, calibrate=calibrate,
                 model__backend="fake" if dry_run else None)
    cfg = load_config(LabelConfig, config, overrides, base)
    load_comparisons(cfg.pairs or out_dir / "pairs" / "output.jsonl")
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
def train_pm_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder; the PM lands in "
                                 "OUT/pm/model."),
    labels: Optional[str] = typer.Option(None, "--labels", help="AI labels (default: "
                                         "OUT/labels/output.jsonl)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base LM."),
    helpful: Optional[str] = typer.Option(None, "--helpful", help="Human comparisons mixed in."),
    pmp: Optional[str] = typer.Option(None, "--pmp", help="PMP data: pretrain on it first."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full"),
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    """Train the preference model on soft AI labels (+ helpfulness comparisons, + PMP)."""
    from constitutional.config import load_config
    from constitutional.train.pm import PMTrainConfig, build_rows, run_pm
    from constitutional.train.pm_data import pmp_examples

    base = flags(labels=labels, model__name=model, helpful=helpful, lora=lora, epochs=epochs,
                 max_steps=max_steps, batch_size=batch_size, learning_rate=lr)
    if pmp:
        base["pmp"] = {"data": pmp}
    cfg = load_config(PMTrainConfig, config, overrides, base)
    build_rows(cfg, cfg.labels or str(out_dir / "labels" / "output.jsonl"))  # fail before work
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
    from constitutional.jsonio import read_jsonl, write_jsonl_atomic
    from constitutional.train.pm import PreferenceModel

    rows, convs, answers = [], [], []
    for line, r in read_jsonl(input_path):
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


@eval_app.command("feedback-accuracy")
def feedback_accuracy_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Human-labelled pairs (HHH: prompt/"
                              "better/worse; HH: chosen/rejected)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The feedback model."),
    methods: str = typer.Option("plain,ensemble,debiased,ensemble+debiased", "--methods",
                                help="Comma list of: plain, ensemble, debiased, "
                                "ensemble+debiased, cot."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N pairs only."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results.json "
                                           "and the labelled rows of each method here."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Label config YAML "
                                          "(format, few-shot, calibration, constitution)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = OVERRIDES,
):
    """Accuracy of AI feedback against human labels, method by method, with 95% intervals."""
    from constitutional.backends import load_backend
    from constitutional.comparisons import load_comparisons
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution
    from constitutional.errors import InputError
    from constitutional.evals.feedback_accuracy import METHODS, evaluate
    from constitutional.jsonio import write_json_atomic
    from constitutional.stages.label import LabelConfig

    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise InputError(f"unknown method {bad[0] if bad else '(none)'!r}; choose from "
                         f"{', '.join(METHODS)}", field="--methods")
    cfg = load_config(LabelConfig, config, overrides,
                      flags(model__name=model, model__backend="fake" if dry_run else None))
    pairs, _ = load_comparisons(data)
    pairs = [p for p in pairs if p.better is not None][:limit]
    if not pairs:
        raise InputError("no human-labelled pairs (need better/worse or chosen/rejected)",
                         path=str(data))
    cpath, constitution = load_constitution(cfg.constitution)
    constitution.require("choice", str(cpath))
    check_model(cfg.model)
    backend = load_backend(cfg.model, log=log)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = evaluate(backend, pairs, cfg, constitution, names, log, out_dir)
    table = Table("method", "pairs", "accuracy", "95% CI", "orders disagree", "picks (A)",
                  "ECE", "pairs/s")
    for name, r in results.items():
        dis = r["order_disagreement"]
        table.add_row(name, str(r["n"]), f"{r['accuracy']:.3f}",
                      f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}",
                      "-" if dis is None else f"{dis:.1%}", f"{r['picks_A']:.1%}",
                      f"{r['ece']:.3f}", f"{r['pairs_per_s']:.1f}" if r["pairs_per_s"] else "-")
    out.print(table)
    if out_dir:
        write_json_atomic(out_dir / "results.json",
                          {"data": str(data), "model": cfg.model.name, "methods": results,
                           "config": cfg.model_dump(mode="json")})
        out.print(f"results -> {out_dir / 'results.json'}", highlight=False)
