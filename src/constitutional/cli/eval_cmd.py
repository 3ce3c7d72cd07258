"""`cai eval compare`, `cai eval mc`, `cai eval feedback-accuracy` and `cai report`: the
evaluations and the report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from constitutional.cli.common import (app, backend_loader, check_model, flags, log, out,
                                       shortcuts, start_run)
from constitutional.stages.eval import EvalConfig

eval_app = typer.Typer(no_args_is_help=True, help="Evaluations.")
app.add_typer(eval_app, name="eval")

OVERRIDES = typer.Argument(None, help="key.path=value overrides of the eval config")


@eval_app.command("compare")
@shortcuts(EvalConfig, {"--judge, -j": "judge.name", "--limit": "limit"})
def compare_cmd(
    models: Optional[List[str]] = typer.Option(None, "--models", help="Models to compare "
                                               "(the first is the Elo anchor); `--models A B "
                                               "C` or repeated."),
    more: Optional[List[str]] = typer.Argument(None, help="More models, and key=value "
                                               "overrides of the eval config."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help="Prompts (JSONL); "
                                          "default: our held-out set for the axis."),
    axis: Optional[List[str]] = typer.Option(None, "--axis", help="harmlessness and/or "
                                             "helpfulness (default: both)."),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="A run folder: "
                                 "answers, judgements, summary.json and plots go to OUT/eval."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Eval config YAML."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fake backend everywhere."),
    given: dict = None,
):
    """Every model answers every prompt; the judge compares answers pairwise (both orders);
    Bradley-Terry Elo with bootstrap intervals and the win-rate matrix."""
    from constitutional.config import load_config
    from constitutional.errors import InputError
    from constitutional.stages.eval import EvalModel, run_eval

    extra = [x for x in (more or []) if "=" not in x]
    overrides = [x for x in (more or []) if "=" in x]
    names = (models or []) + extra
    fake = "fake" if dry_run else None
    cfg = load_config(EvalConfig, config, overrides,
                      given | flags(judge__backend=fake, answer_model__backend=fake))
    if names:
        cfg.models = [EvalModel(name=n) for n in names]
    if not cfg.models or len(cfg.models) < 2:
        raise InputError("give at least two models to compare", field="--models")
    if axis:
        cfg.axes = checked_axes(axis)
    if prompts:
        cfg.prompts = {a: prompts for a in cfg.axes}
    cfg.ablation = False
    for m in [cfg.judge] + [cfg.answer_model.model_copy(update={"name": x.name})
                            for x in cfg.models]:
        check_model(m)
    start_run(out_dir, cfg, "eval.yaml")
    res = run_eval(cfg, out_dir, lambda m: backend_loader(_with_model(m), out_dir), log)
    print_summary(res.output)
    print_verdict(res.output)


def checked_axes(axis: List[str]) -> list[str]:
    """--axis values, each named once, or the one-line error for an unknown one."""
    from constitutional.errors import InputError

    bad = [a for a in axis if a not in ("harmlessness", "helpfulness")]
    if bad:
        raise InputError(f"unknown axis {bad[0]!r}: harmlessness or helpfulness",
                         field="--axis")
    return list(dict.fromkeys(axis))


def _with_model(model_cfg):
    from constitutional.config import GenerateConfig
    return GenerateConfig(model=model_cfg)


def print_summary(summary_path: Path) -> None:
    import json

    s = json.loads(Path(summary_path).read_text())
    for axis, a in s["axes"].items():
        table = Table("model", f"{axis} Elo", "95% CI", *a["models"],
                      title=f"{axis}: {a['judgements']} judgements on {a['groups']} prompts "
                      "(row beats column)")
        for i, name in enumerate(a["models"]):
            lo, hi = a["ci95"][i]
            table.add_row(name, f"{a['elo'][i]:.0f}", f"{lo:.0f} to {hi:.0f}",
                          *("-" if x is None else f"{x:.2f}" for x in a["win_rate"][i]))
        out.print(table)
    if s.get("evasiveness"):
        table = Table("model", "judge: evasive", "lexical: evasive", title="evasiveness")
        for t, e in s["evasiveness"].items():
            if e.get("n"):
                table.add_row(t, f"{e['judge_evasive']:.2f}", f"{e['lexical_evasive']:.2f}")
        out.print(table)
    folder = Path(summary_path).parent
    for f in ("frontier.png", "frontier.csv", "ablation.png"):
        if (folder / f).is_file():
            out.print(f"{f} -> {folder / f}", highlight=False)


def print_verdict(summary_path: Path) -> None:
    """The verdict lines: win rates against the anchor with intervals, evasive refusals and
    over-refusals (`cai run` and `cai eval compare` end with them)."""
    import json

    from constitutional.evals.verdict import lines

    v = json.loads(Path(summary_path).read_text()).get("verdict")
    if v:
        out.print(f"[bold]verdict[/bold] (judge in both orders, against {v['anchor']}, 95% "
                  "intervals over prompts):", highlight=False)
        for line in lines(v):
            out.print("  " + line, highlight=False)


@eval_app.command("mc")
def mc_cmd(
    data: str = typer.Argument(..., help="TruthfulQA-style JSONL (question/choices/"
                               "correct_index), HHH JSONL or BIG-bench task.json; "
                               "bundled:mc_sample is ours."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
):
    """Multiple-choice accuracy by the log-likelihood of each choice, with a 95% interval."""
    from constitutional.backends import load_backend
    from constitutional.config import ModelConfig
    from constitutional.evals.multiple_choice import load_mc, score, summarize
    from constitutional.prompts_io import resolve_prompts_path

    items = load_mc(resolve_prompts_path(data))
    mcfg = ModelConfig(name=model, backend="fake" if dry_run else "transformers")
    check_model(mcfg)
    r = summarize(score(load_backend(mcfg, log=log), items))
    out.print(f"{data}: {r['n']} questions, accuracy {r['accuracy']:.3f} "
              f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], length-normalized "
              f"{r['accuracy_norm']:.3f}, chance {r['chance']:.3f}", highlight=False)


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="A run folder."),
    samples: int = typer.Option(4, "--samples", help="Examples per section."),
):
    """Write RUN/report.md and a self-contained RUN/report.html from a run folder."""
    from constitutional.report import write_report

    md, page = write_report(run, samples)
    out.print(f"report -> {page} (and {md.name})", highlight=False)


@eval_app.command("feedback-accuracy")
def feedback_accuracy_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Human-labelled pairs (HHH: prompt/"
                              "better/worse; HH: chosen/rejected)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The feedback model."),
    methods: str = typer.Option("plain,ensemble,debiased,ensemble+debiased", "--methods",
                                help="Comma list of: plain, ensemble, debiased, "
                                "ensemble+debiased, cot, config (the label config as given, "
                                "e.g. principles=4 layout=answers_first)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N pairs only."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results.json "
                                           "and the labelled rows of each method here."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Label config YAML "
                                          "(format, few-shot, calibration, constitution)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Use the scripted fake backend."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides of "
                                                    "the label config"),
):
    """Accuracy of AI feedback against human labels, method by method, with 95% intervals."""
    from constitutional.backends import load_backend
    from constitutional.comparisons import load_comparisons
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution
    from constitutional.errors import InputError
    from constitutional.evals.feedback_accuracy import METHODS, evaluate
    from constitutional.jsonio import write_json_atomic
    from constitutional.labeling import LabelConfig

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


@eval_app.command("blind-sheet")
def blind_sheet_cmd(
    run: Path = typer.Argument(..., help="A run folder whose eval stage has answered."),
    models: Optional[List[str]] = typer.Argument(None, help="The two models by their eval "
                                                 "label (default: the verdict's anchor and "
                                                 "its last model, e.g. base RL-CAI)."),
    axis: Optional[List[str]] = typer.Option(None, "--axis", help="harmlessness and/or "
                                             "helpfulness (default: the axes answered)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Default: RUN/blind."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N prompts per axis."),
    seed: int = typer.Option(0, "--seed", help="Draws the item order and each item's sides."),
    force: bool = typer.Option(False, "--force", help="Replace a different key already there "
                               "(sheets filled against it can no longer be scored)."),
):
    """A sheet for people to read two models' held-out answers blind: sheet.csv to fill in
    (1, 2 or tie), sheet.md to read, key.json to keep from the readers."""
    import json

    from constitutional.errors import InputError
    from constitutional.evals.blind import make_sheet, write_sheet
    from constitutional.rundir import RunDir

    rd = RunDir(run)
    pair = list(models or []) or _verdict_pair(rd)
    if len(pair) != 2:
        raise InputError(f"give two models, not {len(pair)}", field="models")
    rows, key = make_sheet(rd, pair, checked_axes(axis) if axis else None, seed, limit)
    axes = sorted({it["axis"] for it in key["items"].values()})
    folder = out_dir or rd.blind
    old = folder / "key.json"
    same = lambda k: {f: k.get(f) for f in ("models", "seed", "answers", "items")}  # noqa
    if old.is_file() and same(json.loads(old.read_text())) != same(key) and not force:
        raise InputError("a different key is here; sheets filled against it would be misread "
                         "(--force replaces it, or choose another --out)", path=str(old))
    write_sheet(folder, rows, key)
    out.print(f"{len(rows)} items ({', '.join(axes)}; {pair[0]} vs {pair[1]}) -> "
              f"{folder / 'sheet.csv'} (fill in `choice`) and {folder / 'sheet.md'}; keep "
              f"{folder / 'key.json'} from the readers", highlight=False)


def _verdict_pair(rd) -> list[str]:
    import json

    from constitutional.errors import InputError

    try:
        v = json.loads(rd.eval_summary.read_text())["verdict"]
    except (FileNotFoundError, KeyError, ValueError):
        raise InputError("no eval verdict here: name the two models", field="models") \
            from None
    return [v["anchor"], list(v["models"])[-1]]


@eval_app.command("blind-score")
def blind_score_cmd(
    folder: Path = typer.Argument(..., help="The sheet's folder (holds key.json)."),
    sheets: List[Path] = typer.Argument(..., help="Filled-in sheets, one per reader (CSV "
                                        "or JSONL with item and choice); the file's stem "
                                        "names the reader."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Default: "
                                            "FOLDER/results.json (RUN/blind/results.json "
                                            "is what the run's report shows)."),
):
    """Win rates of the second model against the first from people's blind choices, with
    intervals, agreement between readers and with the run's judge (results.json)."""
    import json

    from constitutional.errors import InputError
    from constitutional.evals.blind import judge_scores, read_choices, score
    from constitutional.jsonio import read_text, write_json_atomic
    from constitutional.rundir import RunDir

    kpath = folder / "key.json"
    if not kpath.is_file():
        raise InputError("no key here (cai eval blind-sheet writes it)", path=str(kpath))
    try:
        key = json.loads(read_text(kpath))
    except ValueError as e:
        raise InputError(f"not a key ({e})", path=str(kpath)) from None
    seen: dict[str, Path] = {}
    for s in sheets:
        if s.stem in seen:
            raise InputError(f"{seen[s.stem]} and this sheet share a name (it names the "
                             "reader)", path=str(s))
        seen[s.stem] = s
    readers = {s.stem: read_choices(s, key) for s in sheets}
    run = RunDir(key["run"])
    judged, changed = judge_scores(run, key)
    if changed:
        out.print(f"note: {run} does not hold the answers this key's sheet showed "
                  f"({', '.join(changed)}): the readers' choices are scored against the key, "
                  "without the run's judge beside them", highlight=False)
    result = score(key, readers, judged)
    out_file = out_file or folder / "results.json"
    write_json_atomic(out_file, result)
    print_blind(result)
    out.print(f"results -> {out_file}", highlight=False)


def print_blind(result: dict) -> None:
    """The blind read's table (the report's rows) and the agreement between readers."""
    from constitutional.evals.blind import table_rows

    first, second = result["models"]
    table = Table("axis", "reader", "items", f"{second} win rate vs {first}", "95% CI", "ties",
                  "judge agrees with the readers", title=f"blind read: {second} vs {first}")
    for row in table_rows(result):
        table.add_row(*row)
    out.print(table)
    for axis, a in result["axes"].items():
        for pair, g in a["agreement"].items():
            if g["n"]:
                out.print(f"{axis}: readers {pair} agree on {g['agree']:.2f} of {g['n']}",
                          highlight=False)
