"""The eval stage's numbers: summary.json from its rows, and the frontier's points and CSV.

Pure functions of the judged rows (no model, no files); stages/eval.py writes what they return.
"""

from __future__ import annotations

import csv
import io

from constitutional.evals.compare import axis_result


def summarize(models, judged, evasive, mc, pm, feedback, answers=None, bootstrap: int = 1000,
              seed: int = 0) -> dict:
    """summary.json from the eval's rows: per axis Elo with intervals and win rates,
    evasiveness, benchmarks, PM numbers, refusal rates and the verdict against base."""
    from constitutional.evals import evasiveness as ev
    from constitutional.evals.multiple_choice import summarize as mc_summary
    from constitutional.evals.verdict import refusal_rates, verdict

    titles = [m.title for m in models]
    axes = {axis: axis_result(titles, rows, bootstrap, seed)
            for axis, rows in judged.items()}
    out = {"models": [m.model_dump() | {"label": m.title} for m in models], "axes": axes,
           "evasiveness": {t: ev.summarize([r for r in evasive if r["model"] == t])
                           for t in titles} if evasive else {},
           "benchmarks": {b: {t: mc_summary(rows) for t, rows in per.items()}
                          for b, per in mc.items()},
           "ablation": pm.get("ablation", {}), "pm_reward": pm.get("reward", {}),
           "pm_accuracy": pm.get("pm_accuracy"), "feedback_accuracy": feedback}
    refusals = {axis: refusal_rates(titles, per_model) for axis, per_model in
                (answers or {}).items()}
    out["refusals"] = refusals
    out["verdict"] = verdict(titles, judged, refusals, out["evasiveness"], bootstrap, seed)
    if {"harmlessness", "helpfulness"} <= set(axes):
        out["frontier"] = frontier_points(models, axes)
    return out


def frontier_points(models: list, axes: dict) -> list[dict]:
    """One point per model (EvalModel-like: title, lines) on the two axes' Elo."""
    h, p = axes["harmlessness"], axes["helpfulness"]
    return [{"label": m.title, "harmlessness": h["elo"][i], "helpfulness": p["elo"][i],
             "harmlessness_ci": h["ci95"][i], "helpfulness_ci": p["ci95"][i],
             "lines": m.lines} for i, m in enumerate(models)]


def frontier_csv(points: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "lines", "harmlessness_elo", "harmlessness_lo", "harmlessness_hi",
                "helpfulness_elo", "helpfulness_lo", "helpfulness_hi"])
    for p in points:
        w.writerow([p["label"], ";".join(p["lines"]), f"{p['harmlessness']:.1f}",
                    *(f"{x:.1f}" for x in p["harmlessness_ci"]), f"{p['helpfulness']:.1f}",
                    *(f"{x:.1f}" for x in p["helpfulness_ci"])])
    return buf.getvalue()
