"""The blind read: the sheet hides which model wrote which answer, the score undoes the order
through the key, and readers are compared with each other and with the run's judge."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import run_cai, write_jsonl
from test_eval import scripted


def judged_run(tmp_path):
    from constitutional.config import ModelConfig
    from constitutional.stages.eval import EvalConfig, EvalModel, run_eval

    load, _ = scripted(tmp_path)
    cfg = EvalConfig(models=[EvalModel(name="meh"), EvalModel(name="safe")],
                     judge=ModelConfig(name="judge", backend="fake"),
                     answer_model=ModelConfig(backend="fake"), axes=["harmlessness"],
                     prompts={"harmlessness": str(tmp_path / "harm.jsonl")}, bootstrap=50,
                     ablation=False, evasiveness=False)
    run_eval(cfg, tmp_path / "run", load, log=lambda m: None)
    return tmp_path / "run"


def read_sheet(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def write_sheet(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def test_sheet_hides_the_models_and_the_score_undoes_the_order(tmp_path):
    run = judged_run(tmp_path)
    r = run_cai(["eval", "blind-sheet", str(run), "meh", "safe"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_sheet(run / "blind/sheet.csv")
    key = json.loads((run / "blind/key.json").read_text())
    assert len(rows) == 6 and list(rows[0]) == ["item", "axis", "question", "prompt",
                                                "response_1", "response_2", "choice", "note"]
    # the sides are drawn per item: the safe answer is response 1 in some items, 2 in others
    firsts = {row["response_1"].split()[0] for row in rows}
    assert firsts == {"SAFE", "MEH"}
    for row in rows:  # the key says which model wrote response 1, and it is right
        writer = key["items"][row["item"]]["response_1"]
        assert row["response_1"].startswith(writer.upper())
    assert "How do I do bad thing" in rows[0]["prompt"]
    assert "Response 2" in (run / "blind/sheet.md").read_text()

    # reader a picks the safe answer wherever it is; reader b always picks response 1 and
    # calls the first item a tie
    a = [dict(row, choice="1" if row["response_1"].startswith("SAFE") else "2")
         for row in rows]
    b = [dict(row, choice="tie" if k == 0 else "1") for k, row in enumerate(rows)]
    write_sheet(tmp_path / "a.csv", a)
    # a spreadsheet saves its CSV with a byte-order mark before the header
    (tmp_path / "a.csv").write_text("\ufeff" + (tmp_path / "a.csv").read_text(),
                                    encoding="utf-8")
    write_sheet(tmp_path / "b.csv", b)
    r = run_cai(["eval", "blind-score", str(run / "blind"), "a.csv", "b.csv"], tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "blind/results.json").read_text())
    h = res["axes"]["harmlessness"]
    assert res["models"] == ["meh", "safe"] and res["readers"] == ["a", "b"]
    assert h["readers"]["a"]["win_rate"] == 1.0 and h["readers"]["a"]["ties"] == 0
    # b's win rate for safe, by hand: items where safe is response 1 (but the tie) + 1/2
    safe_first = [row["response_1"].startswith("SAFE") for row in rows]
    assert h["readers"]["b"]["win_rate"] == (sum(safe_first[1:]) + 0.5) / 6
    assert h["readers"]["b"]["ties"] == 1
    agree = sum(safe_first[1:]) / 6  # a tie never agrees with a choice
    assert h["agreement"]["a / b"] == {"n": 6, "agree": agree}
    # pooled: each item's mean of the two readers
    pooled = [(1.0 + (0.5 if k == 0 else float(s))) / 2 for k, s in enumerate(safe_first)]
    want = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in pooled) / 6
    assert h["pooled"]["win_rate"] == want
    # the scripted judge prefers the safe answer everywhere, as reader a does
    # (pooled items are 0.5 where b chose the meh answer: a tie, which the judge never is)
    decided = sum(p != 0.5 for p in pooled)
    assert h["judge"] == {"n": 6, "win_rate_same_items": 1.0,
                          "agrees_with_readers": sum(p > 0.5 for p in pooled) / 6,
                          "decided": decided, "agrees_where_readers_decided": 1.0}
    assert "blind read: safe vs meh" in r.stdout

    rep = run_cai(["report", str(run)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (run / "report.md").read_text()
    assert "## Blind read" in md and "the run's judge" in md


def test_blind_score_ignores_the_judge_when_the_answers_changed(tmp_path):
    from constitutional.evals.blind import judge_scores, make_sheet
    from constitutional.rundir import RunDir

    run = RunDir(judged_run(tmp_path))
    from constitutional.evals.blind import write_sheet as write_blind

    _, key = make_sheet(run, ["meh", "safe"])
    assert len(judge_scores(run, key)[0]) == 6 and judge_scores(run, key)[1] == []
    write_blind(run.blind, *make_sheet(run, ["meh", "safe"]))
    out = run.eval_answers("safe", "harmlessness").output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0]["completion"] = "something else"
    write_jsonl(out, rows)
    # the judge compared other answers than the sheet's
    assert judge_scores(run, key) == ({}, ["harmlessness"])
    write_jsonl(tmp_path / "r.jsonl", [{"item": "q001", "choice": "2"}])
    r = run_cai(["eval", "blind-score", str(run.blind), "r.jsonl"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "does not hold the answers this key's sheet showed (harmlessness)" in r.stdout
    res = json.loads((run.blind / "results.json").read_text())["axes"]["harmlessness"]
    assert "judge" not in res and res["readers"]["r"]["n"] == 1


def test_bad_sheets_name_file_line_and_field(tmp_path):
    run = judged_run(tmp_path)
    assert run_cai(["eval", "blind-sheet", str(run), "meh", "safe"],
                   tmp_path).returncode == 0
    rows = read_sheet(run / "blind/sheet.csv")
    # an answer over three lines: the bad row's line number counts them
    rows[0]["note"] = "line one\nline two\nline three"
    rows[1]["choice"] = "3"
    write_sheet(tmp_path / "bad.csv", rows)
    r = run_cai(["eval", "blind-score", str(run / "blind"), "bad.csv"], tmp_path)
    assert r.returncode == 2 and "bad.csv:5: choice: '3': write 1, 2 or tie" in r.stderr
    assert not (run / "blind/results.json").exists()

    write_sheet(tmp_path / "blank.csv", rows[2:])  # nothing chosen
    r = run_cai(["eval", "blind-score", str(run / "blind"), "blank.csv"], tmp_path)
    assert r.returncode == 2 and "no item has a choice" in r.stderr

    write_jsonl(tmp_path / "odd.jsonl", [{"item": "q001", "choice": "1"},
                                         {"item": "q999", "choice": "2"}])
    r = run_cai(["eval", "blind-score", str(run / "blind"), "odd.jsonl"], tmp_path)
    assert r.returncode == 2 and "odd.jsonl:2: item: unknown item 'q999'" in r.stderr

    # a different key over one readers may have filled is refused unless forced
    r = run_cai(["eval", "blind-sheet", str(run), "meh", "safe", "--seed", "1"],
                tmp_path)
    assert r.returncode == 2 and "a different key is here" in r.stderr
    assert run_cai(["eval", "blind-sheet", "./run", "meh", "safe"],
                   tmp_path).returncode == 0  # the same key again is fine, however spelt
    r = run_cai(["eval", "blind-sheet", str(run), "meh", "nobody"], tmp_path)
    assert r.returncode == 2 and "no answers of 'nobody'" in r.stderr


def test_score_by_hand():
    from constitutional.evals.blind import score

    key = {"models": ["base", "new"], "items": {
        q: {"axis": "helpfulness", "prompt_id": q, "response_1": "base"} for q in "wxyz"}}
    # p(new better): x and y readers split, z both tie
    readers = {"r1": {"w": 1.0, "x": 1.0, "y": 0.0, "z": 0.5},
               "r2": {"w": 1.0, "x": 0.0, "y": 0.0, "z": 0.5}}
    judge = {"w": 0.9, "x": 0.2, "y": 0.7, "z": 0.6}
    h = score(key, readers, judge, n_boot=50)["axes"]["helpfulness"]
    assert h["readers"]["r1"]["win_rate"] == (1 + 1 + 0 + 0.5) / 4
    assert h["readers"]["r2"]["win_rate"] == (1 + 0 + 0 + 0.5) / 4
    # pooled per item: w 1, x 0.5, y 0, z 0.5 -> (1 + .5 + 0 + .5) / 4, two ties
    assert h["pooled"]["win_rate"] == 0.5 and h["pooled"]["ties"] == 2
    assert h["agreement"]["r1 / r2"] == {"n": 4, "agree": 0.75}
    # the judge picks new on w, y, z and base on x: agrees on w only of all four; of the
    # two the readers decided (w new, y base) it agrees on w
    assert h["judge"]["win_rate_same_items"] == 0.75
    assert h["judge"]["agrees_with_readers"] == 0.25
    assert h["judge"]["decided"] == 2 and h["judge"]["agrees_where_readers_decided"] == 0.5


@pytest.mark.parametrize("folder,seed,expected", [
    # the f126c47 read (docs/quickstart_history.md): both axes
    ("blind_read", 20261202, {"harmlessness": (64, 0.66, 15, [0.56, 0.77]),
                              "helpfulness": (64, 0.66, 17, [0.56, 0.77])}),
    # 19193af's models, greedy, on hh-rlhf red-team openers: harmlessness only
    ("blind_read_hh", 4243, {"harmlessness": (128, 0.59, 63, [0.53, 0.65]),
                             "helpfulness": None}),
    # the b371d99 read (docs/quickstart_history.md): harmlessness only
    ("blind_read_b371d99", 1207, {"harmlessness": (64, 0.67, 26, [0.59, 0.75]),
                                  "helpfulness": None}),
    # the cbad636 read at the top of the README: both axes
    ("blind_read_cbad636", 1208, {"harmlessness": (64, 0.84, 10, [0.77, 0.92]),
                                  "helpfulness": (64, 0.60, 23, [0.51, 0.69])}),
    # cbad636's models, greedy, on hh-rlhf red-team openers and self-instruct seed tasks
    ("blind_read_hh_cbad636", 1209, {"harmlessness": (128, 0.70, 45, [0.64, 0.76]),
                                     "helpfulness": (128, 0.52, 82, [0.47, 0.57])}),
])
def test_a_documented_blind_read_is_what_its_committed_choices_give(folder, seed, expected):
    from pathlib import Path

    from constitutional.evals.blind import read_choices, score

    folder = Path(__file__).resolve().parents[1] / "docs" / folder
    key = json.loads((folder / "key.json").read_text())
    choices = read_choices(folder / "engineer.csv", key)
    assert key["models"] == ["base", "RL-CAI"] and key["seed"] == seed
    axes = score(key, {"engineer": choices})["axes"]
    for axis, want in expected.items():
        if want is None:                                             # not read (or not asked)
            assert axis not in axes or axes[axis]["readers"]["engineer"]["n"] == 0
            continue
        w = axes[axis]["readers"]["engineer"]
        assert (w["n"], round(w["win_rate"], 2), w["ties"]) == want[:3]
        assert [round(x, 2) for x in w["ci95"]] == want[3]


def test_the_external_eval_config_is_the_greedy_base_vs_rl_cai_comparison():
    from pathlib import Path

    from constitutional.config import load_config
    from constitutional.stages.eval import EvalConfig

    path = Path(__file__).resolve().parents[1] / "configs/eval_external.yaml"
    cfg = load_config(EvalConfig, path, ["prompts.harmlessness=r.jsonl"])
    assert [m.title for m in cfg.models] == ["base", "RL-CAI"]
    assert cfg.sampling.temperature == 0.0 and cfg.compare == "anchor" and cfg.limit == 128
    assert cfg.prompts["harmlessness"] == "r.jsonl"
