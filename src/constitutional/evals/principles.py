"""`cai constitution evaluate`: which choice principles the feedback model actually applies.

Every human-labelled pair is labelled once under every choice principle of the constitution,
in both orders (one loaded model, one resumable labeling pass; half the pairs show the
human-preferred answer as (B), so position bias cannot pass for accuracy). From those votes,
with no further model calls:

- per principle: accuracy against the human label (bootstrap 95% interval), position
  consistency (how often the same *letter* wins after the answers are swapped, as Google's
  RLAIF reports position bias: 1.0 is a principle that always says the same letter, 0.0 one
  that always follows the answer), calibration (ECE of p(human-preferred answer)), and how
  often its pick disagrees with the ensemble of all principles;
- the ensemble: accuracy as a function of K, the principles drawn per pair exactly as
  `cai label` draws them (seeded by the pair's id), and each principle's leave-one-out
  contribution: the all-principle ensemble's accuracy minus the ensemble's without it, and,
  finer (one principle of many seldom flips a pick), the same for the ensemble's mean
  p(human-preferred answer).

A vote's `p_first` is p(answer a is better) whichever order it was asked in.
"""

from __future__ import annotations

from typing import Sequence

from constitutional.constitution import draw_principles
from constitutional.evals.metrics import bootstrap_ci, expected_calibration_error, pick_score


def principle_probs(row: dict) -> dict[str, list[dict]]:
    """{principle: its votes} of one labelled row."""
    out: dict[str, list[dict]] = {}
    for v in row["votes"]:
        out.setdefault(v["principle"], []).append(v)
    return out


def p_human_better(p_a: float, row: dict) -> float:
    return p_a if row["human_better"] == "a" else 1.0 - p_a


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def per_principle(rows: list[dict], names: list[str]) -> list[dict]:
    """The per-principle table (see the module docstring), in constitution order."""
    ensemble = [_mean([v["p_first"] for v in r["votes"]]) for r in rows]
    by_principle = [principle_probs(r) for r in rows]
    out = []
    for name in names:
        scores, p_better, same_letter, disagree = [], [], [], []
        for r, p_all, votes_of in zip(rows, ensemble, by_principle):
            votes = votes_of.get(name, [])
            if not votes:
                continue
            p_a = _mean([v["p_first"] for v in votes])
            p_better.append(p_human_better(p_a, r))
            scores.append(pick_score(p_better[-1]))
            disagree.append(float((p_a > 0.5) != (p_all > 0.5)))
            by_order = {v["order"]: v["p_first"] for v in votes}
            if "ab" in by_order and "ba" in by_order:
                letter_ab = by_order["ab"] > 0.5            # (A) won when a was shown first
                letter_ba = (1.0 - by_order["ba"]) > 0.5     # (A) won when b was shown first
                same_letter.append(float(letter_ab == letter_ba))
        lo, hi = bootstrap_ci(scores)
        out.append({"principle": name, "n": len(scores), "accuracy": _mean(scores),
                    "ci95": [lo, hi], "position_consistency": _mean(same_letter)
                    if same_letter else None, "ece": expected_calibration_error(p_better),
                    "disagrees_with_ensemble": _mean(disagree)})
    return out


def ensemble_accuracy(rows: list[dict], chosen: dict[str, list[str]]) -> tuple[float, list]:
    """Accuracy of averaging, for each row, the votes of the principles `chosen[row id]`."""
    scores = [pick_score(p) for p in ensemble_p(rows, chosen)]
    return _mean(scores), scores


def ensemble_p(rows: list[dict], chosen: dict[str, list[str]]) -> list[float]:
    """Each row's p(human-preferred answer) from the votes of `chosen[row id]`."""
    return [p_human_better(_mean([v["p_first"] for v in r["votes"]
                                  if v["principle"] in chosen[r["id"]]]), r) for r in rows]


def k_curve(rows: list[dict], names: list[str], seed: int = 0) -> list[dict]:
    """Accuracy at K = 1..N principles per pair, drawn as `cai label` draws them."""
    out = []
    for k in range(1, len(names) + 1):
        chosen = {r["id"]: [names[i] for i in draw_principles(len(names), k, seed, r["id"])]
                  for r in rows}
        acc, scores = ensemble_accuracy(rows, chosen)
        out.append({"k": k, "accuracy": acc, "ci95": list(bootstrap_ci(scores))})
    return out


def leave_one_out(rows: list[dict], names: list[str]) -> dict[str, tuple[float, float]]:
    """{principle: (all-principle ensemble accuracy - the ensemble's accuracy without it,
    the same for the mean p(human-preferred answer))}."""
    def accuracy_and_p(chosen) -> tuple[float, float]:
        ps = ensemble_p(rows, chosen)
        return _mean([pick_score(p) for p in ps]), _mean(ps)

    full_acc, full_p = accuracy_and_p({r["id"]: names for r in rows})
    out = {}
    for name in names:
        if len(names) == 1:
            out[name] = (full_acc - 0.5, full_p - 0.5)
            continue
        acc, p = accuracy_and_p({r["id"]: [n for n in names if n != name] for r in rows})
        out[name] = (full_acc - acc, full_p - p)
    return out


def select(table: list[dict], n: int) -> list[str]:
    """The n principles that help most: by leave-one-out accuracy, then leave-one-out
    p(preferred), then their own accuracy."""
    ranked = sorted(table, key=lambda t: (-t["leave_one_out"], -t["leave_one_out_p"],
                                          -t["accuracy"], t["principle"]))
    return [t["principle"] for t in ranked[:n]]


def summarize(rows: list[dict], names: list[str], seed: int = 0) -> dict:
    table = per_principle(rows, names)
    loo = leave_one_out(rows, names)
    for t in table:
        t["leave_one_out"], t["leave_one_out_p"] = loo[t["principle"]]
    curve = k_curve(rows, names, seed)
    return {"pairs": len(rows), "principles": table, "k_curve": curve,
            "ensemble_accuracy": curve[-1]["accuracy"] if curve else None}


def k_curve_png(curve: list[dict], title: str) -> bytes:
    from constitutional.evals.plots import COLORS, _figure, _png

    plt, fig, ax = _figure(6.0, 4.2)
    x = [p["k"] for p in curve]
    ax.plot(x, [p["accuracy"] for p in curve], "o-", color=COLORS[0], label="ensemble of K")
    ax.fill_between(x, [p["ci95"][0] for p in curve], [p["ci95"][1] for p in curve],
                    color=COLORS[0], alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("Choice principles per pair (K)")
    ax.set_ylabel("Accuracy against human labels")
    ax.set_title(title)
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def evaluate_constitution(cfg, data: str, run, get_backend, log=print,
                          limit: int | None = None) -> dict:
    """Label `data`'s human-labelled pairs under every choice principle of
    `cfg.constitution`, in both orders, in the run folder's `constitution_eval/` step
    (resumable), then write results.json and k_curve.png there; returns the results.

    `cfg` is a LabelConfig: its model, format, layout, few-shot, calibration and seed are
    used; the principles per pair and the two orders are this evaluation's own."""
    from constitutional.comparisons import load_comparisons
    from constitutional.constitution import load_constitution
    from constitutional.datasource import digest
    from constitutional.errors import InputError
    from constitutional.evals.feedback_accuracy import shown
    from constitutional.jsonio import write_atomic, write_json_atomic

    cpath, constitution = load_constitution(cfg.constitution)
    constitution.require("choice", str(cpath))
    pairs, _ = load_comparisons(data)
    pairs = shown([c for c in pairs if c.better is not None])[:limit]
    if not pairs:
        raise InputError("no human-labelled pairs (each needs better/worse or "
                         "chosen/rejected)", path=str(data))
    stage = run.constitution_eval
    rows = label_under_each(stage, cfg, constitution, pairs, {"pairs": digest(data),
                            "limit": limit}, get_backend, log)
    names = [p.name for p in constitution.choice]
    summary = summarize(rows, names, cfg.seed)
    summary.update(constitution=f"{constitution.name} v{constitution.version}",
                   fingerprint=constitution.fingerprint(), model=cfg.model.name, data=str(data))
    write_json_atomic(stage.path / "results.json", summary)
    write_atomic(stage.path / "k_curve.png",
                 k_curve_png(summary["k_curve"], f"{constitution.name}: ensemble of K principles"))
    return summary


def label_under_each(stage, cfg, constitution, pairs: list, inputs: dict, get_backend,
                     log=print, every: bool = True) -> list[dict]:
    """Label `pairs` (human-labelled, shown as `shown` orients them) in the resumable step
    `stage`: under every choice principle of `constitution` in both orders, or with
    `every=False` as `cai label` would (cfg's principles per pair and debias); the rows."""
    from constitutional.artifacts import model_identity, read_output, run_model_stage
    from constitutional.config import results_config
    from constitutional.labeling import Labeler

    if every:
        cfg = cfg.model_copy(update={"principles": len(constitution.choice), "debias": True,
                                     "cot": False})
    labeler = Labeler(cfg, constitution)

    def work(backend, chunk, advance):
        out = labeler.label(backend, chunk)
        advance(len(chunk))
        return out

    result = run_model_stage(
        stage, config=results_config(cfg),
        inputs={**inputs, "model": model_identity(cfg.model.name),
                "constitution": constitution.fingerprint()},
        items=pairs, chunk_size=cfg.chunk_size, get_backend=get_backend, work=work,
        total=len(pairs), unit="pairs", log=log)
    return read_output(result.output)


def selected_constitution(spec: str, keep: list[str]):
    """The constitution with only the choice principles `keep`, in their ranked order."""
    from constitutional.constitution import load_constitution

    _, c = load_constitution(spec)
    by_name = {p.name: p for p in c.choice}
    return c.model_copy(update={
        "choice": [by_name[n] for n in keep],
        "description": (c.description + "\n" if c.description else "") +
        f"Choice principles: the {len(keep)} that helped the feedback model most "
        "(`cai constitution evaluate --select`)."})
