"""`cai constitution evaluate` (issue 20, part 1): each metric against numbers worked out by
hand on a scripted feedback model whose principles behave in known ways."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cai, write_jsonl

from constitutional.backends.fake import FakeBackend
from constitutional.constitution import draw_principles
from constitutional.evals.principles import evaluate_constitution, select, selected_constitution
from constitutional.labeling import LabelConfig
from constitutional.rundir import RunDir

P_HIGH = 1 / (1 + math.exp(-3))          # softmax([0, -3])[0]: the confident letter's p
P_WEAK = 1 / (1 + math.exp(-1))          # softmax([0, -1])[0]: WRONG is less sure

CONSTITUTION = """name: probe
description: principles that behave in known ways
choice:
  - {name: letter-a, text: "Which one? ALWAYSA"}
  - {name: right, text: "Which one? RIGHT"}
  - {name: wrong, text: "Which one? WRONG"}
"""


def scripted(prompt, options):
    """ALWAYSA says (A); RIGHT picks the GOOD answer; WRONG, less sure, the BAD one."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    if "ALWAYSA" in text:
        return [0.0, -3.0]
    a_good = text.index("GOOD") < text.index("BAD")
    if "RIGHT" in text:
        return [0.0, -3.0] if a_good else [-3.0, 0.0]
    return [-1.0, 0.0] if a_good else [0.0, -1.0]


def setup(tmp_path, n=40):
    (tmp_path / "probe.yaml").write_text(CONSTITUTION)
    data = write_jsonl(tmp_path / "hhh.jsonl", [
        {"id": f"p{i}", "prompt": f"Question {i}?", "better": f"GOOD answer {i}",
         "worse": f"BAD answer {i}"} for i in range(n)])
    return LabelConfig(constitution=str(tmp_path / "probe.yaml"), model={"backend": "fake"}), \
        data


def test_each_metric_matches_the_hand_computed_value(tmp_path):
    cfg, data = setup(tmp_path)
    loads = []

    def get_backend():
        loads.append(1)
        return FakeBackend(scores=scripted)
    run = RunDir(tmp_path / "run")
    r = evaluate_constitution(cfg, str(data), run, get_backend, log=lambda m: None)
    t = {x["principle"]: x for x in r["principles"]}
    # a principle that always says "A": accuracy 0.5 on a balanced set, consistency 1.0
    assert t["letter-a"]["accuracy"] == 0.5 and t["letter-a"]["position_consistency"] == 1.0
    assert t["letter-a"]["ece"] == pytest.approx(0.0)
    assert t["right"]["accuracy"] == 1.0 and t["right"]["position_consistency"] == 0.0
    assert t["right"]["ece"] == pytest.approx(1 - P_HIGH, abs=1e-5)
    assert t["wrong"]["accuracy"] == 0.0 and t["wrong"]["ece"] == pytest.approx(P_WEAK, 1e-5)
    # the ensemble, (0.5 + P_HIGH + 1 - P_WEAK) / 3 > 0.5, picks the GOOD answer every time
    rows = [json.loads(x) for x in run.constitution_eval.output.read_text().splitlines()]
    a_better = sum(x["human_better"] == "a" for x in rows) / len(rows)
    assert 0 < a_better < 1                    # the shown order is mixed
    assert t["right"]["disagrees_with_ensemble"] == 0.0
    assert t["wrong"]["disagrees_with_ensemble"] == 1.0
    # "A" alone gives p = 0.5, not > 0.5: it disagrees exactly where a is the better answer
    assert t["letter-a"]["disagrees_with_ensemble"] == pytest.approx(a_better)
    assert r["ensemble_accuracy"] == 1.0
    # leave-one-out: without RIGHT, (0.5 + 1 - P_WEAK) / 2 < 0.5 gets every pair wrong
    assert t["right"]["leave_one_out"] == 1.0
    assert t["wrong"]["leave_one_out"] == 0.0 and t["letter-a"]["leave_one_out"] == 0.0
    # and in mean p(preferred): without WRONG the ensemble is surer, so WRONG's is negative
    full_p = (0.5 + P_HIGH + 1 - P_WEAK) / 3
    assert t["wrong"]["leave_one_out_p"] == pytest.approx(full_p - (0.5 + P_HIGH) / 2, abs=1e-5)
    assert t["right"]["leave_one_out_p"] == pytest.approx(full_p - (1.5 - P_WEAK) / 2, abs=1e-5)
    # K = 1: the drawn principle's own score, drawn as `cai label` draws it
    names = ["letter-a", "right", "wrong"]
    own = {"letter-a": 0.5, "right": 1.0, "wrong": 0.0}
    k1 = sum(own[names[draw_principles(3, 1, 0, x["id"])[0]]] for x in rows) / len(rows)
    assert r["k_curve"][0]["accuracy"] == pytest.approx(k1)
    assert [p["k"] for p in r["k_curve"]] == [1, 2, 3] and r["k_curve"][2]["accuracy"] == 1.0
    assert (run.constitution_eval.path / "k_curve.png").read_bytes()[:4] == b"\x89PNG"
    # one labeling pass, every principle in both orders; a rerun loads no model
    assert len(loads) == 1 and all(len(x["votes"]) == 6 for x in rows)
    again = evaluate_constitution(cfg, str(data), run, get_backend, log=lambda m: None)
    assert again["principles"] == r["principles"] and len(loads) == 1


def test_select_keeps_the_principles_that_help_most(tmp_path):
    cfg, data = setup(tmp_path, n=12)
    r = evaluate_constitution(cfg, str(data), RunDir(tmp_path / "run"),
                              lambda: FakeBackend(scores=scripted), log=lambda m: None)
    table = r["principles"]
    assert select(table, 1) == ["right"]
    # equal leave-one-out accuracy: by leave-one-out p, then by their own accuracy
    flat = [{**t, "leave_one_out": 0.0} for t in table]
    assert select(flat, 3)[0] == "right"
    even = [{**t, "leave_one_out": 0.0, "leave_one_out_p": 0.0} for t in table]
    assert select(even, 2) == ["right", "letter-a"]
    c = selected_constitution(cfg.constitution, ["wrong", "right"])
    assert [p.name for p in c.choice] == ["wrong", "right"]


def test_the_command_prints_the_table_writes_a_constitution_and_feeds_the_report(tmp_path):
    _, data = setup(tmp_path, n=8)
    r = run_cai(["constitution", "evaluate", "probe.yaml", "--data", "hhh.jsonl", "--out", "run",
                 "--dry-run", "--select", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "position consistency" in r.stdout and "ensemble of K" in r.stdout
    chosen = tmp_path / "run/constitution_eval/selected-2.yaml"
    v = run_cai(["constitution", "validate", str(chosen)], tmp_path)
    assert v.returncode == 0 and "2 choice" in v.stdout, v.stdout + v.stderr
    rep = run_cai(["report", "run"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "Choice principles, one by one" in (tmp_path / "run/report.md").read_text()


@pytest.mark.parametrize("args, what", [
    (["missing.yaml", "--data", "hhh.jsonl"], "constitution not found"),
    (["probe.yaml", "--data", "missing.jsonl"], "file not found"),
    (["probe.yaml", "--data", "nolabel.jsonl"], "no human-labelled pairs"),
    (["noprinciples.yaml", "--data", "hhh.jsonl"], "choice"),
])
def test_bad_input_is_one_line(tmp_path, args, what):
    setup(tmp_path, n=4)
    write_jsonl(tmp_path / "nolabel.jsonl", [{"prompt": "q", "response_a": "x",
                                              "response_b": "y"}])
    (tmp_path / "noprinciples.yaml").write_text(
        'name: empty\ncritique_revision:\n  - {name: a, critique: "Harm?", revision: "Fix."}\n')
    r = run_cai(["constitution", "evaluate", *args, "--out", "run", "--dry-run"], tmp_path)
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr
