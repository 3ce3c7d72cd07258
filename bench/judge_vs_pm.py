"""The constitution as a direct reward against the preference model's reward, on the quickstart.

    .venv/bin/python bench/judge_vs_pm.py [--sl-run runs/quickstart] [--out runs/judge_vs_pm]

Starts from a finished quickstart's SL-CAI model (`make demo` leaves one in runs/quickstart)
and trains RL-CAI twice with configs/cai_rlaif.yaml's PPO, nothing else changed:

  pm     the paper's route: the SL-CAI model's pairs, labelled by the feedback model, a
         preference model on the labels, PPO against its score (OUT/pm);
  judge  d-RLAIF: PPO against the feedback model's own 1-10 rating (`rl.reward=judge`), no
         pairs, labels or preference model (OUT/judge).

Then SL-CAI and the two RL-CAI models answer the 64 + 64 held-out eval prompts of ours
(greedy, 64 new tokens) and each answer gets both rewards: the judge's rating and the PM's
score. One table: each reward's mean with its bootstrap interval per prompt set, PPO's KL to
the SL-CAI model on its own held-out prompts, and the time of each route (label + pm + rl, or
rl alone). Each model is scored by the reward it was trained on and by the other one: the
first measures how well PPO optimized, the second whether it holds for another reader. Both
runs resume like any run; the table is recomputed each time. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from constitutional.backends.base import Sampling  # noqa: E402
from constitutional.evals.metrics import bootstrap_ci  # noqa: E402

RECIPE = str(ROOT / "configs/cai_rlaif.yaml")
PROMPTS = {"harmful": "bundled:redteam_eval", "helpful": "bundled:helpful_eval"}


def cai(*args: str) -> None:
    cmd = [sys.executable, "-m", "constitutional.cli", *args]
    print("$ cai " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def train(sl_run: Path, out: Path) -> None:
    for name in ("pm", "judge"):
        if not (out / name / "sl_model").is_dir():
            shutil.copytree(sl_run / "sl_model", out / name / "sl_model")
    cai("run", RECIPE, "--out", str(out / "pm"), "--from", "pairs", "--until", "rl")
    cai("run", RECIPE, "--out", str(out / "judge"), "--from", "rl", "--until", "rl",
        "rl.reward=judge")


def seconds(run: Path, stages: tuple[str, ...]) -> float:
    return sum(json.loads((run / s / "manifest.json").read_text())["seconds"] for s in stages)


def held_out(out: Path) -> dict:
    import constitutional as cai_api
    from constitutional.config import load_config
    from constitutional.constitution import load_constitution
    from constitutional.prompts_io import conversation, load_prompts
    from constitutional.stages.pipeline import RecipeConfig
    from constitutional.train.judge_reward import JudgeReward
    from constitutional.train.pm import PreferenceModel

    cfg = load_config(RecipeConfig, RECIPE, [])
    convs = {k: [conversation(r, None) for r in load_prompts(spec)[1]]
             for k, spec in PROMPTS.items()}
    models = {"SL-CAI": out / "pm/sl_model/model", "RL-CAI, PM reward": out / "pm/rl/model",
              "RL-CAI, judge reward": out / "judge/rl/model"}
    greedy = Sampling(temperature=0.0, max_tokens=64)
    answers = {}
    for name, path in models.items():
        policy = cai_api.load_backend(str(path))
        answers[name] = {k: [c[0].text.strip() for c in policy.generate(cs, greedy)]
                         for k, cs in convs.items()}
        del policy
    pm = PreferenceModel(str(out / "pm/pm/model"))
    judge_backend = cai_api.load_backend(cfg.rl.judge)
    _, constitution = load_constitution(cfg.label.constitution)
    judge = JudgeReward(judge_backend, constitution, cfg.rl.ppo.seed)
    rows = {}
    for name in models:
        rows[name] = {}
        for k, cs in convs.items():
            a = answers[name][k]
            for reward, fn in (("judge", judge), ("pm", pm.score)):
                vals = fn(cs, a)
                rows[name][f"{reward}/{k}"] = {"mean": sum(vals) / len(vals),
                                               "ci95": list(bootstrap_ci(vals))}
            rows[name][f"words/{k}"] = sum(len(x.split()) for x in a) / len(a)
    return {"rows": rows, "answers": answers}


def table(out: Path, result: dict) -> str:
    runs = {"SL-CAI": None, "RL-CAI, PM reward": out / "pm", "RL-CAI, judge reward":
            out / "judge"}
    head = ("| model | judge, harmful | judge, helpful | PM, harmful | PM, helpful | words "
            "(harmful / helpful) | KL | time (s) |")
    lines = [head, "|" + "---|" * 8]
    for name, run in runs.items():
        r = result["rows"][name]
        cells = [f"{r[k]['mean']:.3f} [{r[k]['ci95'][0]:.3f}, {r[k]['ci95'][1]:.3f}]"
                 for k in ("judge/harmful", "judge/helpful", "pm/harmful", "pm/helpful")]
        words = f"{r['words/harmful']:.0f} / {r['words/helpful']:.0f}"
        kl = t = "-"
        if run is not None:
            rl = json.loads((run / "rl/manifest.json").read_text())
            kl = f"{rl['kl_after']:.2f}"
            stages = ("pairs", "label", "pm", "rl") if run.name == "pm" else ("rl",)
            t = f"{seconds(run, stages):.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {words} | {kl} | {t} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sl-run", default="runs/quickstart", help="a run with sl_model/")
    ap.add_argument("--out", default="runs/judge_vs_pm")
    a = ap.parse_args()
    sl_run, out = (ROOT / a.sl_run).resolve(), (ROOT / a.out).resolve()
    if not (sl_run / "sl_model/model").is_dir():
        sys.exit(f"{sl_run}: no SL-CAI model (sl_model/model); run `make demo` first")
    train(sl_run, out)
    result = held_out(out)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(table(out, result))


if __name__ == "__main__":
    main()
