"""`cai constitution infer` (issue 20, part 2): proposal, merging, testing, selection and the
held-out check on a scripted feedback model whose behaviour is known; the command, its bad
input, and resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import kill_after_shards, run_cai, write_jsonl

from constitutional.backends.fake import FakeBackend, last_user_text
from constitutional.evals.feedback_accuracy import shown
from constitutional.evals.inverse import (InferConfig, clean_rule, infer_constitution,
                                          is_held_out, load_preferences, merge, rouge_l)
from constitutional.rundir import RunDir

WARM = "Choose the response that is warm and caring."
WARMER = "Choose the response that is warm, caring and kind."
COLD = "Choose the response that ignores the person coldly."


def propose_reply(prompt, index):
    """Pair i: i % 4 == 0 or 1 -> two wordings of the right rule; 2 -> a wrong rule; 3 -> no
    rule at all."""
    text = last_user_text(prompt)
    i = int(text.split("Question ")[1].split("?")[0])
    return [WARM, WARMER, COLD, "I think Response A is better."][i % 4]


def label_scores(prompt, options):
    """A 'warm' principle picks the KIND answer, a 'coldly' one the RUDE answer, any other
    principle (the default constitution's, the bare question) says (A)."""
    text = last_user_text(prompt)
    if "warm" not in text and "coldly" not in text:
        return [0.0, -3.0]
    a_kind = text.index("KIND answer") < text.index("RUDE answer")
    if "warm" in text:
        return [0.0, -3.0] if a_kind else [-3.0, 0.0]
    return [-3.0, 0.0] if a_kind else [0.0, -3.0]


def fake() -> FakeBackend:
    return FakeBackend(reply=propose_reply, scores=label_scores)


def data(tmp_path, n=32):
    return write_jsonl(tmp_path / "prefs.jsonl", [
        {"id": f"p{i}", "prompt": f"Question {i}?", "chosen": f"KIND answer {i}",
         "rejected": f"RUDE answer {i}"} for i in range(n)])


def test_rouge_l_and_merging_by_hand():
    # LCS of [avoids, harm] and [avoids, causing, harm] is 2: P = 1, R = 2/3, F1 = 0.8
    assert rouge_l("avoids harm", "avoids causing harm") == pytest.approx(0.8)
    assert rouge_l("Is Honest.", "is honest") == 1.0 and rouge_l("x y", "z w") == 0.0
    # function words do not count: these share "is" and "and" and nothing else
    assert rouge_l("is honest and direct", "is warm and caring") == 0.0
    groups = merge(["is warm and caring", "is honest", "is warm, caring and kind",
                    "is honest and direct", "refuses"], 0.5)
    # [warm, caring] in [warm, caring, kind]: 0.8; [honest] in [honest, direct]: 2/3; two
    # groups of 2, the shorter rule first
    assert [(g["text"], g["support"]) for g in groups] == [
        ("is honest", 2), ("is warm and caring", 2), ("refuses", 1)]
    assert len(merge(["is warm and caring", "is warm, caring and kind"], 0.9)) == 2


def test_clean_rule_keeps_one_general_clause():
    assert clean_rule('"Choose the response that avoids harm." Because...', 2, 30) == \
        "avoids harm"
    assert clean_rule("Rule: choose the response that is honest\nmore", 2, 30) == "is honest"
    assert clean_rule("Response A is better.", 2, 30) is None
    assert clean_rule("Choose the response that is like Response A here.", 2, 30) is None
    assert clean_rule("Choose the response that helps.", 2, 30) is None      # too short
    # the request read back, or an answer quoted, is no rule
    assert clean_rule("Choose the response that would apply to other conversations too.", 2,
                      30) is None
    assert clean_rule('Choose the response that "most people would survive a fall."', 2,
                      30) is None
    assert clean_rule("Choose the response that says, I can't do that here.", 2, 30) is None
    assert clean_rule("Choose the response that " + "very " * 40 + "kind", 2, 30) is None


def test_propose_merge_test_select_and_check_by_hand(tmp_path):
    path = str(data(tmp_path))
    cfg = InferConfig(model={"backend": "fake"}, keep=3)
    assert cfg.model.name == "qwen2.5-coder-1.5b"        # a partial model keeps the default
    run = RunDir(tmp_path / "run")
    loads = []
    r = infer_constitution(cfg, path, run, lambda: loads.append(1) or fake(),
                           log=lambda m: None)
    assert loads == [1]                       # one loaded model for every step
    pairs = shown(load_preferences(path))
    held_in = [p for p in pairs if not is_held_out(p.id, 0.5)]
    held_out = [p for p in pairs if is_held_out(p.id, 0.5)]
    assert (r["held_in"], r["held_out"]) == (len(held_in), len(held_out)) and held_out
    # proposals: one per held-in pair; the "no rule" quarter dropped; two wordings merged
    kinds = [int(p.id[1:]) % 4 for p in held_in]
    assert r["rules"] == sum(k != 3 for k in kinds)
    by_text = {c["text"]: c for c in r["candidates"]}
    assert set(by_text) == {"is warm and caring", "ignores the person coldly"}
    assert by_text["is warm and caring"]["support"] == sum(k in (0, 1) for k in kinds)
    # reconstruction on the held-in pairs: the right rule always, the wrong one never
    assert by_text["is warm and caring"]["accuracy"] == 1.0
    assert by_text["ignores the person coldly"]["accuracy"] == 0.0
    assert by_text["is warm and caring"]["position_consistency"] == 0.0
    # only the rule above chance is kept, with a critique/revision pair built from it
    warm = by_text["is warm and caring"]["name"]
    assert r["kept"] == [warm] and r["above_chance"]
    v = run_cai(["constitution", "validate", r["constitution"]], tmp_path)
    assert v.returncode == 0 and "1 critique/revision pairs, 1 choice" in v.stdout, v.stderr
    # held-out: the inferred rule reconstructs every preference; the default constitution
    # and the bare question say (A) in both orders, which averages to a tie on every pair
    check = r["held_out_check"]
    assert check["inferred"]["accuracy"] == 1.0 and check["inferred"]["n"] == len(held_out)
    assert check["default"]["accuracy"] == 0.5 and check["no principle"]["accuracy"] == 0.5
    assert check["default"]["principles"] == 16 and check["no principle"]["principles"] == 1
    saved = json.loads((run.constitution_infer / "results.json").read_text())
    assert saved["kept"] == r["kept"] and saved["merge_curve"]["0.9"] == 3
    # a second call reuses every step: no model call at all
    again = FakeBackend(reply=propose_reply, scores=label_scores)
    assert infer_constitution(cfg, path, run, lambda: again, log=lambda m: None) == r
    assert again.calls == []


def test_the_command_writes_a_constitution_every_command_can_use(tmp_path):
    data(tmp_path, n=12)
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {match: 'preferred Response', reply: 'Choose the response that is warm "
        "and caring.'}\n")
    args = ["constitution", "infer", "--pairs", "prefs.jsonl", "--out", "run", "--dry-run",
            "model.fake_script=rules.yaml"]
    r = run_cai(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "is warm and caring" in r.stdout and "held-out check" in r.stdout
    made = tmp_path / "run/constitution_infer/constitution.yaml"
    lab = run_cai(["label", "--dry-run", "--pairs", "prefs.jsonl", "--out", "lab",
                   "--constitution", str(made), "--show", "0"], tmp_path)
    assert lab.returncode == 0, lab.stderr
    # every call is in the call log: the proposals and the labeling under the new rule
    calls = [json.dumps(json.loads(x)) for x in
             (tmp_path / "run/calls.jsonl").read_text().splitlines()]
    assert any("preferred Response" in c for c in calls)
    assert any("is warm and caring." in c and "(A)" in c for c in calls)
    rep = run_cai(["report", "run"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "run/report.md").read_text()
    assert "Inferred constitution" in md and "is warm and caring" in md


@pytest.mark.parametrize("rows, extra, what", [
    (None, [], "file not found"),
    ([{"prompt": "Q?", "chosen": "x", "rejected": "y"},
      {"prompt": "Q2?", "response_a": "x", "response_b": "y"}], [],
     "prefs.jsonl:2: chosen: no preference"),
    ([{"id": "only", "prompt": "Q?", "chosen": "x", "rejected": "y"}], [], "both need pairs"),
    ([{"id": f"p{i}", "prompt": "Q?", "chosen": "x", "rejected": "y"} for i in range(6)],
     ["label.constitution=empty.yaml"], "no `choice` principles"),
])
def test_bad_input_is_one_line(tmp_path, rows, extra, what):
    if rows is not None:
        write_jsonl(tmp_path / "prefs.jsonl", rows)
    (tmp_path / "empty.yaml").write_text("name: x\ncritique_revision:\n  - name: a\n    "
                                         "critique: c\n    revision: r\n")
    r = run_cai(["constitution", "infer", "--pairs", "prefs.jsonl", "--out", "run",
                 "--dry-run", *extra], tmp_path)
    assert r.returncode == 2 and what in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run/constitution_infer/results.json").exists()


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_inverse import propose_reply, label_scores
from constitutional.backends.fake import FakeBackend
from constitutional.evals.inverse import InferConfig, infer_constitution
from constitutional.rundir import RunDir
backend = FakeBackend(reply=propose_reply, scores=label_scores, latency_s={latency})
cfg = InferConfig(model={{"backend": "fake"}}, label={{"chunk_size": 2}}, keep=3)
infer_constitution(cfg, "prefs.jsonl", RunDir(sys.argv[1]), lambda: backend, log=print)
"""


def test_killed_mid_test_then_resumed_matches_an_unbroken_run(tmp_path):
    from pathlib import Path

    data(tmp_path, n=40)
    tests = str(Path(__file__).parent)
    (tmp_path / "fast.py").write_text(SCRIPT.format(tests=tests, latency=0.0))
    (tmp_path / "slow.py").write_text(SCRIPT.format(tests=tests, latency=0.05))
    subprocess.run([sys.executable, "fast.py", "a"], cwd=tmp_path, check=True)
    shards = tmp_path / "b/constitution_infer/tests/shards"
    kill_after_shards(["slow.py", "b"], tmp_path, shards, at_least=2, timeout=120,
                      start=lambda args, cwd: subprocess.Popen(
                          [sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL))
    assert not (tmp_path / "b/constitution_infer/results.json").exists()
    assert (tmp_path / "b/constitution_infer/proposals/output.jsonl").is_file()
    subprocess.run([sys.executable, "fast.py", "b"], cwd=tmp_path, check=True)
    for f in ("results.json", "constitution.yaml", "tests/output.jsonl",
              "heldout/inferred/output.jsonl"):
        a = (tmp_path / "a/constitution_infer" / f).read_text()
        b = (tmp_path / "b/constitution_infer" / f).read_text()
        assert a == b.replace("b/constitution_infer", "a/constitution_infer"), f
