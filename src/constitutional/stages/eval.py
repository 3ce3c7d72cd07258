"""Stage `eval`: every evaluation of the papers on the models of a run (or any models).

    eval/answers/<model>/<axis>/   each model answers the axis's held-out prompts (generate)
    eval/mc/<benchmark>/<model>/   multiple-choice log-likelihood scores per benchmark
    eval/ablation_revision_only/   the critique stage's prompts worked without critiques
    eval/judge/<axis>/             the judge's soft label for every (prompt, model pair)
    eval/evasiveness/              judge and lexical evasiveness of each harmlessness answer
    eval/feedback_accuracy/        the run's labeling method on human-labelled pairs
    eval/pm_scores/                what the run's preference model scores (one row)
    eval/summary.json              Elo with intervals, win rates, evasiveness, benchmarks,
                                   ablation curves, PM and feedback accuracy
    eval/frontier.csv, frontier.png, ablation.png

Each model is loaded once (the judge and the helpful model are kept for their later uses,
the rest released after answering), every model stage is resumable, and the numbers derived
from them are recomputed from the stage outputs each time (cheap and deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, field_validator

from constitutional.artifacts import (StageResult, model_identity, read_output, run_model_stage,
                                      run_sharded)
from constitutional.config import (GenerateConfig, ModelConfig, SamplingConfig, StrictModel,
                                   results_config)
from constitutional.errors import InputError
from constitutional.evals.compare import AXES, judge_constitution, pairwise_comparisons
from constitutional.evals.summary import frontier_csv, summarize
from constitutional.datasource import digest
from constitutional.jsonio import sha256_json, write_atomic, write_json_atomic
from constitutional.rundir import RunDir, slug

STAGE = "eval"


class EvalModel(StrictModel):
    name: str = Field(description="A built-in name, a model folder (a run's sl_model/model, "
                      "rl/model, an RL snapshot) or a hub id.")
    label: str | None = Field(None, description="Name in tables and plots (default: name).")
    lines: list[str] = Field(default_factory=list, description="Frontier-plot lines "
                             "(training methods) through this point, in model order.")

    @property
    def title(self) -> str:
        return self.label or self.name


class EvalConfig(StrictModel):
    models: list[EvalModel] | None = Field(None, description="Models to compare, the first "
                                           "is the Elo anchor (None: the run's base model, "
                                           "SL-CAI model, RL snapshots and RL model).")
    answer_model: ModelConfig = Field(default_factory=ModelConfig, description="How the "
                                      "compared models are loaded (backend, dtype, device, "
                                      "batch size); `name` comes from each model.")
    judge: ModelConfig = Field(default_factory=ModelConfig, description="The model that "
                               "compares answers and judges evasiveness.")
    axes: list[Literal["harmlessness", "helpfulness"]] = Field(default_factory=lambda:
                                                               list(AXES))
    prompts: dict[str, str] = Field(
        default_factory=lambda: {"harmlessness": "bundled:redteam_eval",
                                 "helpfulness": "bundled:helpful_eval"},
        description="Prompts per axis; keep them out of every training stage.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts per axis.")
    principles: dict[str, list[str]] = Field(default_factory=dict, description="Replace "
                                             "the judge's principles of an axis.")
    judge_principles: int | None = Field(None, ge=1, description="Principles drawn per "
                                         "comparison (None: all of the axis).")
    debias: bool = Field(True, description="Ask the judge in both orders.")
    prompt_format: Literal["chat", "text"] = "text"
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, max_tokens=96, seed=0),
        description="How every model answers (the same for all).")
    system_prompt: str | None = None
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for the intervals.")
    evasiveness: bool = Field(True, description="The judge reads the evasiveness of every "
                              "harmlessness answer (the lexical reading is always done, on "
                              "both axes).")
    compare: Literal["all", "anchor"] = Field(
        "all", description="all: every pair of models; anchor: each model against the first "
        "only (the win rates against base, at a fraction of the judge's time).")
    snapshots: bool = Field(True, description="With `models` unset: also evaluate the RL "
                            "snapshots (points of the frontier between SL-CAI and RL-CAI).")
    ablation: bool = Field(True, description="Critique ablation (needs the run's critique "
                           "stage and preference model).")
    benchmarks: list[str] = Field(default_factory=list, description="Multiple-choice files "
                                  "(TruthfulQA-style JSONL, HHH JSONL, BIG-bench task.json); "
                                  "bundled:mc_sample is a small one of ours.")
    human_pairs: str | None = Field(None, description="Human-labelled pairs (HHH or HH): PM "
                                    "accuracy and the run's feedback-label accuracy on them.")
    chunk_size: int = Field(64, ge=1)
    seed: int = 0

    @field_validator("prompts", "principles")
    @classmethod
    def _axes(cls, v):
        bad = [k for k in v if k not in AXES]
        if bad:
            raise ValueError(f"unknown axis {bad[0]!r} (have: {', '.join(AXES)})")
        return v


def run_models(run_dir: RunDir | Path, base: str | None, rl_method: str = "ppo",
               snapshots: bool = True) -> list[EvalModel]:
    """The run's models in training order: base -> SL-CAI -> RL snapshots -> RL, and for a
    SELF-ALIGN run base -> engraved -> verbose-cloned."""
    run = RunDir.of(run_dir)
    rl_line = f"RL-CAI ({rl_method.upper()})"
    self_align = [(path, label) for path, label in
                  ((run.engraved_model, "engraved"), (run.verbose_model, "verbose-cloned"))
                  if path.is_dir()]
    base_lines = ["SELF-ALIGN"] if self_align else ["SL-CAI"]
    out = [EvalModel(name=base, label="base", lines=base_lines)] if base else []
    if run.sl_model.is_dir():
        out.append(EvalModel(name=str(run.sl_model), label="SL-CAI",
                             lines=["SL-CAI", rl_line]))
    snaps = sorted(run.rl_snapshots.glob("step-*")) if snapshots else []
    out += [EvalModel(name=str(p), label=f"RL step {int(p.name[5:])}", lines=[rl_line])
            for p in snaps if p.is_dir()]
    if run.rl_model.is_dir():
        out.append(EvalModel(name=str(run.rl_model), label="RL-CAI", lines=[rl_line]))
    out += [EvalModel(name=str(path), label=label, lines=["SELF-ALIGN"])
            for path, label in self_align]
    return out


def run_eval(cfg: EvalConfig, run_dir: str | Path, load_backend: Callable,
             log: Callable[[str], None] = print, critique=None, label=None,
             base: str | None = None, rl_method: str = "ppo") -> StageResult:
    """`critique`/`label`: the run's CritiqueConfig and LabelConfig (for the ablation and for
    feedback accuracy); `base`: the run's starting model (the first point of the frontier)."""
    import time

    t0 = time.time()
    run_dir = RunDir.of(run_dir)
    models = cfg.models or run_models(run_dir, base, rl_method, cfg.snapshots)
    titles = [m.title for m in models]
    if len(models) < 2:
        raise InputError("the evaluation needs at least two models to compare",
                         field="eval.models")
    if len(set(map(slug, titles))) < len(titles):
        raise InputError("two models share a label", field="eval.models")
    from constitutional.backends import BackendCache

    # the judge, the helpful model and the feedback model have later uses: kept loaded
    keep = {cfg.judge.name} | ({critique.model.name} if critique else set()) | \
        ({critique.critic.name} if critique and critique.critic else set()) | \
        ({label.model.name} if label and cfg.human_pairs else set())
    backends = BackendCache(load_backend)
    answers = {axis: [] for axis in cfg.axes}
    mc: dict[str, dict[str, list[dict]]] = {}
    for m in models:
        mcfg = cfg.answer_model.model_copy(update={"name": m.name})
        for axis in cfg.axes:
            answers[axis].append(_answers(cfg, axis, m, mcfg, run_dir, backends, log))
        for bench in cfg.benchmarks:
            mc.setdefault(bench, {})[m.title] = _mc(bench, m, mcfg, run_dir, backends, log)
        if m.name not in keep:
            backends.release(mcfg)
    chains = _ablation_chains(cfg, critique, run_dir, backends, log)
    judged = {axis: _judge(cfg, axis, titles, answers[axis], run_dir, backends, log)
              for axis in cfg.axes}
    evasive = _evasiveness(cfg, titles, answers.get("harmlessness"), run_dir, backends, log) \
        if cfg.evasiveness and "harmlessness" in cfg.axes else []
    feedback = _feedback_accuracy(cfg, label, run_dir, backends, log)
    backends.release()
    pm = _pm_numbers(cfg, run_dir, chains, titles, answers.get("harmlessness"), log)
    summary = summarize(models, judged, evasive, mc, pm, feedback, answers, cfg.bootstrap,
                        cfg.seed)
    summary["seconds"] = time.time() - t0
    write_outputs(run_dir, summary)
    n = sum(len(rows) for rows in judged.values())
    return StageResult(STAGE, run_dir.eval_summary, n, summary["seconds"], False)


# -- model stages ------------------------------------------------------------------------

def counted(fn: Callable):
    """`fn(backend, chunk)` as a stage's work: the progress bar advances by the chunk."""
    def work(backend, chunk, advance):
        out = fn(backend, chunk)
        advance(len(chunk))
        return out
    return work


def _answers(cfg, axis, m: EvalModel, mcfg, run_dir, backends, log) -> dict[str, dict]:
    from constitutional.stages.generate import run_generate

    gen = GenerateConfig(model=mcfg, prompts=cfg.prompts[axis], limit=cfg.limit,
                         sampling=cfg.sampling, system_prompt=cfg.system_prompt)
    res = run_generate(gen, run_dir, backends.loader(mcfg), log,
                       folder=run_dir.eval_answers(m.title, axis))
    return {r["id"]: r for r in read_output(res.output) if r["sample"] == 0}


def _mc(bench: str, m: EvalModel, mcfg, run_dir, backends, log) -> list[dict]:
    from constitutional.evals.multiple_choice import load_mc, score
    from constitutional.prompts_io import resolve_prompts_path

    path = resolve_prompts_path(bench)
    items = load_mc(path)
    stage = run_dir.eval_mc(path.stem, m.title)
    res = run_model_stage(stage, config={"benchmark": path.name},
                          inputs={"benchmark": digest(path),
                                  "model": model_identity(m.name)},
                          items=items, chunk_size=64, get_backend=backends.loader(mcfg),
                          work=counted(score),
                          total=len(items), unit="questions", log=log)
    return read_output(res.output)


def _ablation_chains(cfg, critique, run_dir, backends, log) -> dict[str, list[dict]]:
    from constitutional.stages.critique import run_critique

    done = run_dir.critique.output
    if not (cfg.ablation and critique and done.is_file()):
        return {}
    twin = critique.model_copy(update={"mode": "revision_only"})
    res = run_critique(twin, run_dir, backends.loader(twin.model), log,
                       folder=run_dir.eval_ablation,
                       get_critic=backends.loader(twin.critic) if twin.critic else None)
    return {"critique": read_output(done), "revision_only": read_output(res.output)}


def _judge(cfg, axis, titles, answers, run_dir, backends, log) -> list[dict]:
    from constitutional.labeling import LabelConfig, Labeler

    constitution = judge_constitution(axis, cfg.principles.get(axis))
    k = cfg.judge_principles or len(constitution.choice)
    lcfg = LabelConfig(model=cfg.judge, principles=k, debias=cfg.debias, few_shot=0,
                       prompt_format=cfg.prompt_format, seed=cfg.seed)
    labeler = Labeler(lcfg, constitution)
    items = pairwise_comparisons(axis, answers, anchor_only=cfg.compare == "anchor")
    stage = run_dir.eval_judge(axis)
    res = run_model_stage(
        stage, config={"principles": [p.text for p in constitution.choice], "k": k,
                       "debias": cfg.debias, "format": cfg.prompt_format, "seed": cfg.seed,
                       "models": titles, "compare": cfg.compare},
        inputs={"judge": model_identity(cfg.judge.name),
                "answers": sha256_json([sorted((pid, r["completion"]) for pid, r in a.items())
                                        for a in answers])},
        items=items, chunk_size=cfg.chunk_size, get_backend=backends.loader(cfg.judge),
        work=counted(labeler.label),
        total=len(items), unit="comparisons", log=log)
    return read_output(res.output)


def _evasiveness(cfg, titles, answers, run_dir, backends, log) -> list[dict]:
    from constitutional.evals import evasiveness as ev

    items = [(t, pid, r) for t, a in zip(titles, answers) for pid, r in a.items()]

    def work(backend, chunk, advance):
        ps = ev.judge(backend, [(r["messages"], r["completion"]) for _, _, r in chunk],
                      cfg.prompt_format)
        advance(len(chunk))
        return [{"model": t, "id": pid, "prompt": r["prompt"], "answer": r["completion"],
                 "p_evasive": round(p, 6), **ev.lexical_flags(r["completion"])}
                for (t, pid, r), p in zip(chunk, ps)]

    res = run_model_stage(run_dir.eval_evasiveness,
                          config={"format": cfg.prompt_format, "question": ev.PRINCIPLE},
                          inputs={"judge": model_identity(cfg.judge.name),
                                  "answers": sha256_json([[t, pid, r["completion"]]
                                                          for t, pid, r in items])},
                          items=items, chunk_size=cfg.chunk_size,
                          get_backend=backends.loader(cfg.judge), work=work,
                          total=len(items), unit="answers", log=log)
    return read_output(res.output)


def _feedback_accuracy(cfg, label, run_dir, backends, log) -> dict | None:
    """The run's labeling method on human-labelled pairs (the accuracy of stage 2a's labels)."""
    if not (cfg.human_pairs and label):
        return None
    from constitutional.comparisons import load_comparisons
    from constitutional.constitution import load_constitution
    from constitutional.evals.feedback_accuracy import shown, summarize as fa_summary
    from constitutional.labeling import Labeler, method_name

    pairs = shown([c for c in load_comparisons(cfg.human_pairs)[0] if c.better is not None])
    _, constitution = load_constitution(label.constitution)
    labeler = Labeler(label, constitution)
    res = run_model_stage(
        run_dir.eval_feedback_accuracy, config=results_config(label),
        inputs={"pairs": digest(cfg.human_pairs), "model": model_identity(label.model.name),
                "constitution": constitution.fingerprint()},
        items=pairs, chunk_size=64, get_backend=backends.loader(label.model),
        work=counted(labeler.label), total=len(pairs), unit="pairs", log=log)
    rows = read_output(res.output)
    out = {"method": method_name(label), "file": cfg.human_pairs, **fa_summary(rows, 0.0)}
    log(f"{STAGE}: feedback accuracy on {len(rows)} human-labelled pairs {out['accuracy']:.3f}")
    return out


def _pm_numbers(cfg, run_dir, chains, titles, harm_answers, log) -> dict:
    """Everything the run's preference model scores: the ablation chains, each model's
    harmlessness answers, and (optionally) human-labelled pairs."""
    pm_dir = run_dir.pm_model
    if not pm_dir.is_dir():
        return {}
    from constitutional.evals.ablation import ablation

    def score(_):
        """One row: every number the PM gives (computed at once, the PM loaded once)."""
        from constitutional.train.pm import PreferenceModel

        pm = PreferenceModel(pm_dir, device=cfg.judge.device)
        out: dict = {"ablation": ablation(chains, pm.score)}
        if harm_answers:
            out["reward"] = {}
            for t, a in zip(titles, harm_answers):
                s = pm.score([r["messages"] for r in a.values()],
                             [r["completion"] for r in a.values()])
                out["reward"][t] = sum(s) / len(s) if s else None
        if cfg.human_pairs:
            out["pm_accuracy"] = _pm_accuracy(pm, cfg.human_pairs)
            log(f"{STAGE}: PM accuracy on human-labelled pairs "
                f"{out['pm_accuracy']['accuracy']:.3f}")
        return [out]

    res = run_sharded(
        run_dir.eval_pm_scores, config={"titles": titles},
        inputs={"pm": model_identity(str(pm_dir)), "chains": sha256_json(chains),
                "answers": sha256_json(harm_answers),
                "pairs": digest(cfg.human_pairs) if cfg.human_pairs else None},
        items=[0], chunk_size=1, process=score, log=log)
    return read_output(res.output)[0]


def _pm_accuracy(pm, pairs_path: str) -> dict:
    from constitutional.comparisons import load_comparisons
    from constitutional.evals.metrics import bootstrap_ci

    pairs = [c for c in load_comparisons(pairs_path)[0] if c.better is not None]
    convs = [[{"role": r, "content": t} for r, t in c.conversation] for c in pairs]
    sa = pm.score(convs, [c.a for c in pairs])
    sb = pm.score(convs, [c.b for c in pairs])
    hits = [1.0 if (x > y) == (c.better == 0) else 0.0 if x != y else 0.5
            for c, x, y in zip(pairs, sa, sb)]
    return {"n": len(hits), "accuracy": sum(hits) / len(hits), "ci95": list(bootstrap_ci(hits)),
            "file": pairs_path}


# -- the files --------------------------------------------------------------------------

def write_outputs(run_dir: RunDir | Path, summary: dict) -> None:
    from constitutional.evals.plots import ablation_png, frontier_png

    run = RunDir.of(run_dir)
    if summary.get("frontier"):
        points = summary["frontier"]
        lines = list(dict.fromkeys(x for p in points for x in p["lines"]))
        write_atomic(run.eval_file("frontier.csv"), frontier_csv(points))
        write_atomic(run.eval_file("frontier.png"), frontier_png(points, lines))
    if summary.get("ablation"):
        write_atomic(run.eval_file("ablation.png"), ablation_png(summary["ablation"]))
    write_json_atomic(run.eval_summary, summary)


# -- the recipe stage ------------------------------------------------------------------------

class Section(StrictModel):
    eval: EvalConfig = Field(default_factory=EvalConfig)


FAKE = ("eval.judge", "eval.answer_model")


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """Win rates, Elo and evasiveness of base, SL-CAI and RL-CAI on held-out prompts (eval/)."""
    from constitutional.stages.registry import SELF_ALIGN_STAGES

    base = cfg.selfalign.model.name if set(cfg.stages) & set(SELF_ALIGN_STAGES) \
        else cfg.sft.model.name
    return [run_eval(cfg.eval, run, models.load, run.log, critique=cfg.critique,
                     label=cfg.label, base=base, rl_method=cfg.rl.method)]
