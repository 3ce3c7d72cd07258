"""`cai run`: every stage of a recipe on the fake backend and tiny models; kill and resume."""

from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import cai_popen, run_cai, write_jsonl


def recipe(tmp_path, tiny, method="ppo"):
    write_jsonl(tmp_path / "red.jsonl", [{"id": f"r{i}", "prompt": f"Bad question {i}?"}
                                         for i in range(16)])
    write_jsonl(tmp_path / "help.jsonl", [{"id": f"h{i}", "prompt": f"Help me {i}"}
                                          for i in range(4)])
    write_jsonl(tmp_path / "human.jsonl", [{"prompt": f"Human: Question {i}?", "better":
                                            f"A kind answer {i}.", "worse": f"Go away {i}."}
                                           for i in range(5)])
    (tmp_path / "recipe.yaml").write_text(f"""
critique: {{prompts: red.jsonl, limit: 8, few_shot: 1, chunk_size: 4,
           sampling: {{max_tokens: 12}}}}
helpful: {{prompts: help.jsonl, samples: 2, sampling: {{max_tokens: 12}}}}
sft: {{model: {{name: {tiny}}}, precision: fp32, batch_size: 4, max_length: 96,
      save_steps: 1000}}
show: 2
pairs: {{prompts: red.jsonl, chunk_size: 4, sampling: {{max_tokens: 12}}}}
label: {{principles: 2, chunk_size: 4}}
pm: {{model: {{name: {tiny}}}, precision: fp32, epochs: 1, batch_size: 4, eval_fraction: 0.25}}
rl:
  method: {method}
  ppo: {{prompts: red.jsonl, steps: 4, batch_size: 4, mini_batch_size: 2, max_tokens: 8,
        precision: fp32, eval_every: 2, save_every: 1}}
  dpo: {{precision: fp32, batch_size: 4, max_length: 96}}
eval: {{limit: 3, bootstrap: 50, benchmarks: [bundled:mc_sample], chunk_size: 4,
       human_pairs: human.jsonl}}
""")
    return ["run", "recipe.yaml", "--dry-run"]


ARTIFACTS = ["critique/output.jsonl", "helpful/output.jsonl", "sl_model/model/config.json",
             "pairs/output.jsonl", "label/output.jsonl", "pm/model/config.json",
             "rl/model/config.json"]


def test_cai_run_every_stage_then_reuses_them(tmp_path, tiny_llama):
    args = recipe(tmp_path, tiny_llama)
    r = run_cai(args + ["--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    for a in ARTIFACTS:
        assert (tmp_path / "run" / a).is_file(), a
    for stage in ("critique", "helpful", "sl_model", "pairs", "label", "pm", "rl"):
        m = json.loads((tmp_path / "run" / stage / "manifest.json").read_text())
        assert m["status"] == "complete", stage
    rl = json.loads((tmp_path / "run/rl/manifest.json").read_text())
    assert rl["eval_prompts"] > 0 and "reward_after" in rl
    evals = [json.loads(x) for x in (tmp_path / "run/rl/eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert "held-out" in r.stdout and "rl/model" in r.stdout
    # the eval stage compared base -> SL-CAI -> RL snapshot -> RL and the report was written
    s = json.loads((tmp_path / "run/eval/summary.json").read_text())
    assert [m["label"] for m in s["models"]] == ["base", "SL-CAI", "RL step 2", "RL-CAI"]
    assert s["axes"]["harmlessness"]["judgements"] == 3 * 6
    assert [p["round"] for p in s["ablation"]["revision_only"]] == [0, 1]
    assert s["pm_accuracy"]["n"] == 5 and s["feedback_accuracy"]["n"] == 5
    assert set(s["benchmarks"]["bundled:mc_sample"]) == {"base", "SL-CAI", "RL step 2",
                                                         "RL-CAI"}
    assert "report -> " in r.stdout and (tmp_path / "run/report.html").is_file()
    again = run_cai(args + ["--out", "run"], tmp_path)
    assert again.returncode == 0 and again.stdout.count("reused") >= 6
    # a retrained SL-CAI model (same path, new weights) invalidates what was made with it
    before = json.loads((tmp_path / "run/rl/manifest.json").read_text())["inputs"]["policy"]
    r = run_cai(args + ["--out", "run", "sft.epochs=2"], tmp_path)
    assert r.returncode == 0, r.stderr
    for stage in ("sl_answers", "pairs", "rl"):
        assert f"{stage}: config or inputs changed" in r.stderr, stage
    after = json.loads((tmp_path / "run/rl/manifest.json").read_text())["inputs"]["policy"]
    assert after != before


def test_from_and_until_and_bad_stage(tmp_path, tiny_llama):
    args = recipe(tmp_path, tiny_llama, method="dpo")
    r = run_cai(args + ["--out", "run", "--until", "pairs"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run/pairs/output.jsonl").is_file()
    assert not (tmp_path / "run/labels").exists()
    r = run_cai(args + ["--out", "run", "--from", "label"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run/rl/model/config.json").is_file()        # DPO this time
    hist = json.loads((tmp_path / "run/rl/log_history.json").read_text())
    assert any("rewards/margins" in h for h in hist)
    # one switch: GRPO with the preference model as reward replaces the DPO result
    r = run_cai(args + ["--out", "run", "--from", "pm", "rl.method=grpo",
                        "rl.grpo.max_steps=1", "rl.grpo.precision=fp32",
                        "rl.grpo.max_tokens=6", "rl.grpo.batch_size=4"], tmp_path)
    assert r.returncode == 0, r.stderr
    hist = json.loads((tmp_path / "run/rl/log_history.json").read_text())
    assert any(k.startswith("reward") for h in hist for k in h)
    assert json.loads((tmp_path / "run/rl/manifest.json").read_text())["config"]["method"] \
        == "grpo"
    r = run_cai(args + ["--out", "run", "--from", "rl", "rl.method=rloo",
                        "rl.rloo.max_steps=1", "rl.rloo.precision=fp32",
                        "rl.rloo.max_tokens=6", "rl.rloo.batch_size=4"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run/rl/manifest.json").read_text())
    assert m["config"]["method"] == "rloo" and m["config"]["beta"] == 0.05
    bad = run_cai(args + ["--out", "run", "--from", "vibes"], tmp_path)
    assert bad.returncode == 2 and "unknown stage 'vibes'" in bad.stderr
    fresh = run_cai(args + ["--out", "other", "--from", "pm"], tmp_path)
    assert fresh.returncode == 2 and "no SL-CAI model in this run yet" in fresh.stderr


def test_kill_cai_run_during_rl_and_restart_matches_unbroken(tmp_path, tiny_llama):
    args = recipe(tmp_path, tiny_llama)
    assert run_cai(args + ["--out", "a"], tmp_path).returncode == 0
    proc = cai_popen(args + ["--out", "b"], tmp_path)
    ckpt = tmp_path / "b/rl/checkpoint.pt"      # written after the first iteration's logs
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b/rl/model").exists()
    r = run_cai(args + ["--out", "b"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming after iteration" in r.stderr, r.stderr[-3000:]
    for f in ("pairs/output.jsonl", "label/output.jsonl", "rl/log.jsonl", "rl/eval.jsonl"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text(), f


@pytest.mark.parametrize("name", ["quickstart", "cai_rlaif", "cai_dpo", "cai_paper"])
def test_shipped_recipes_are_valid(name):
    from pathlib import Path

    from constitutional.config import load_config
    from constitutional.stages.pipeline import RecipeConfig

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(RecipeConfig, path, [], {})
    assert cfg.stages[0] == "sl-cai" and cfg.stages[-2:] == ["eval", "report"]
    assert cfg.rl.method == ("dpo" if name in ("cai_dpo", "quickstart") else "ppo")
    # the quickstart's DPO learns from pairs by construction, so it needs no labels or PM
    assert (cfg.rl.dpo.pairs == "revisions") == (name == "quickstart")
    assert ("label" in cfg.stages) == (name != "quickstart")
