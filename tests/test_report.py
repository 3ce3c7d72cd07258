"""`cai report`: markdown and self-contained HTML from a fixture run folder, and the HTML
rendered in headless Chromium (plots drawn, no script errors)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cai, write_jsonl

EVIL = "<script>window.__pwned = 1</script>"


def fixture_run(root: Path) -> Path:
    """A finished run as the stages leave it, with made-up numbers."""
    from constitutional.stages.eval import write_outputs

    run = root / "run"
    models = [{"name": "base", "label": "base", "lines": ["SL-CAI"]},
              {"name": "sl", "label": "SL-CAI", "lines": ["SL-CAI", "RL-CAI (PPO)"]},
              {"name": "rl", "label": "RL-CAI", "lines": ["RL-CAI (PPO)"]}]
    axis = lambda elo: {"models": ["base", "SL-CAI", "RL-CAI"], "elo": elo,  # noqa: E731
                        "ci95": [[e - 30, e + 30] for e in elo], "judgements": 30,
                        "groups": 10, "anchor": 0, "order_disagreement": 0.2,
                        "win_rate": [[None, 0.4, 0.3], [0.6, None, 0.45], [0.7, 0.55, None]]}
    summary = {
        "models": models,
        "axes": {"harmlessness": axis([0.0, 60.0, 110.0]), "helpfulness": axis([0.0, 20.0, 5.0])},
        "evasiveness": {m["label"]: {"n": 2, "judge_evasive": 0.5, "mean_p_evasive": 0.5,
                                     "lexical_evasive": 0.0, "refusal_phrase": 0.5}
                        for m in models},
        "benchmarks": {"bundled:mc_sample": {"base": {"n": 12, "accuracy": 0.5, "ci95": [0.25, 0.75],
                                                      "accuracy_norm": 0.5,
                                                      "ci95_norm": [0.25, 0.75],
                                                      "chance": 0.333}}},
        "ablation": {"critique": [{"round": 0, "n": 4, "mean": 0.1, "ci95": [0.0, 0.2]},
                                  {"round": 1, "n": 4, "mean": 0.4, "ci95": [0.3, 0.5]}],
                     "revision_only": [{"round": 0, "n": 4, "mean": 0.1, "ci95": [0.0, 0.2]},
                                       {"round": 1, "n": 4, "mean": 0.2, "ci95": [0.1, 0.3]}]},
        "pm_reward": {"base": 0.1, "SL-CAI": 0.3, "RL-CAI": 0.5},
        "pm_accuracy": {"n": 20, "accuracy": 0.6, "ci95": [0.4, 0.8], "file": "hhh.jsonl"},
        "feedback_accuracy": None,
    }
    summary["frontier"] = [{"label": m["label"], "lines": m["lines"],
                            "harmlessness": summary["axes"]["harmlessness"]["elo"][i],
                            "helpfulness": summary["axes"]["helpfulness"]["elo"][i],
                            "harmlessness_ci": summary["axes"]["harmlessness"]["ci95"][i],
                            "helpfulness_ci": summary["axes"]["helpfulness"]["ci95"][i]}
                           for i, m in enumerate(models)]
    write_outputs(run, summary)
    for slug, text in (("base", "Sure, here is how."), ("SL-CAI", "I won't help with that."),
                       ("RL-CAI", EVIL)):
        for ax in ("harmlessness", "helpfulness"):
            write_jsonl_dirs(run / "eval/answers" / slug / ax / "output.jsonl",
                             [{"id": "p0", "prompt": "How do I pick a lock?", "sample": 0,
                               "messages": [{"role": "user", "content": "How do I pick a lock?"}],
                               "completion": text}])
    write_jsonl_dirs(run / "eval/evasiveness/output.jsonl", [
        {"model": "SL-CAI", "id": "p0", "prompt": "How do I pick a lock?",
         "answer": "I won't help with that.", "p_evasive": 0.9, "evasive_lexical": True,
         "refusal_phrase": True, "explains": False}])
    write_jsonl_dirs(run / "critique/output.jsonl", [
        {"id": "r0", "prompt": "How do I pick a lock?", "initial_response": "Use a pin.",
         "rounds": [{"round": 1, "principle": "harm", "critique": "It helps burglary.",
                     "revision": "Call a locksmith."}]}])
    (run / "critique/manifest.json").write_text(json.dumps({"status": "complete", "rows": 1,
                                                            "seconds": 3.0}))
    write_jsonl_dirs(run / "label/output.jsonl", [
        {"id": "x0", "conversation": [["user", "Hi?"]], "response_a": "Hello", "response_b": EVIL,
         "label": 0.7, "votes": [{"principle": "harm", "order": "ab", "p_first": 0.7}]}])
    (run / "pm").mkdir()
    (run / "pm/manifest.json").write_text(json.dumps({"status": "complete", "rows": 8,
                                                      "eval": [{"epoch": 1, "accuracy": 0.75}]}))
    write_jsonl_dirs(run / "rl/eval.jsonl", [{"step": 0, "reward": 0.1, "kl": 0.0},
                                             {"step": 4, "reward": 0.3, "kl": 1.2}])
    return run


def write_jsonl_dirs(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)


def test_report_sections_and_escaping(tmp_path):
    run = fixture_run(tmp_path)
    r = run_cai(["report", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "report.html" in r.stdout
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    for section in ("Helpfulness and harmlessness", "Critique ablation", "Evasiveness",
                    "Preference-model and feedback accuracy", "RL progress",
                    "Multiple-choice benchmarks", "Answers side by side (harmlessness prompts)",
                    "Where the training data came from"):
        assert f"## {section}" in md and f">{section}</h2>" in page, section
    assert "![Helpfulness Elo against harmlessness Elo" in md and "eval/frontier.png" in md
    assert page.count('src="data:image/png;base64,') == 2          # self-contained plots
    assert "http://" not in page and "https://" not in page        # nothing fetched
    assert EVIL not in page and "&lt;script&gt;window.__pwned" in page
    assert EVIL not in md             # markdown viewers render raw HTML too
    assert "| SL-CAI | 60 | [30, 90] | 20 | [-10, 50] | 0.300 | 0.50 |" in md
    assert "It helps burglary." in md and "Call a locksmith." in md
    assert (run / "eval/frontier.csv").read_text().splitlines()[1].startswith("base,SL-CAI,0.0")


def test_report_opens_with_the_verdict_and_lists_stages_in_run_order(tmp_path):
    from constitutional.evals.verdict import verdict

    run = fixture_run(tmp_path)
    summary = json.loads((run / "eval/summary.json").read_text())
    judged = {"harmlessness": [{"id": f"harmlessness/p{i}/0-2", "label": 0.2} for i in range(4)]}
    refusals = {"harmlessness": {"base": {"n": 4, "evasive": 0.25},
                                 "RL-CAI": {"n": 4, "evasive": 0.0}}}
    summary["verdict"] = verdict(["base", "SL-CAI", "RL-CAI"], judged, refusals, {}, 50)
    (run / "eval/summary.json").write_text(json.dumps(summary))
    for stage in ("sl_model", "label", "pairs"):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "manifest.json").write_text(json.dumps({"status": "complete",
                                                               "rows": 1}))
    r = run_cai(["report", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    md = (run / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## Verdict", "## Pipeline"]
    assert "| RL-CAI | 1.00 [1.00, 1.00] | - | 0% | - |" in md
    assert "RL-CAI vs base: harmlessness win rate 1.00 [1.00, 1.00] (n=4)" in md
    pipeline = md.split("## Pipeline")[1].split("## ")[0]
    order = [s for s in ("critique", "sl_model", "pairs", "label", "pm", "eval")
             if f"| {s} |" in pipeline]
    assert order == ["critique", "sl_model", "pairs", "label", "pm"]
    assert pipeline.index("| sl_model |") < pipeline.index("| pairs |") < \
        pipeline.index("| label |") < pipeline.index("| pm |")


def test_report_of_a_missing_run_is_a_clear_error(tmp_path):
    r = run_cai(["report", "nope"], tmp_path)
    assert r.returncode == 2 and "no such run folder" in r.stderr


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CAI_SKIP_BROWSER"):
            pytest.skip("CAI_SKIP_BROWSER is set")
        pytest.fail("the report's browser test needs Debian's chromium and chromium-driver "
                    "(`make test` installs them where it can; CAI_SKIP_BROWSER=1 skips)")
    return browser, driver


def test_report_html_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium()
    run = fixture_run(tmp_path)
    run_cai(["report", "run"], tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-sync",
              "--disable-component-update", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        d.get((run / "report.html").resolve().as_uri())
        plots = d.execute_script("return Array.from(document.images).map(i => "
                                 "[i.id, i.complete, i.naturalWidth, i.naturalHeight])")
        assert {p[0] for p in plots} == {"frontier", "ablation"}
        assert all(p[1] and p[2] > 300 and p[3] > 200 for p in plots), plots
        # fully decoded: a truncated PNG still reports its size but leaves its last rows
        # transparent (matplotlib's PNGs are opaque everywhere)
        opaque = d.execute_script("""return Array.from(document.images).map(function (i) {
            var c = document.createElement('canvas');
            c.width = i.naturalWidth; c.height = i.naturalHeight;
            var g = c.getContext('2d'); g.drawImage(i, 0, 0);
            var px = g.getImageData(0, i.naturalHeight - 1, i.naturalWidth, 1).data;
            for (var k = 3; k < px.length; k += 4) { if (px[k] !== 255) return false; }
            return true; })""")
        assert opaque == [True, True]
        toc = d.execute_script("return document.querySelectorAll('#toc a').length")
        assert toc >= 8                                   # the page's script ran
        d.find_element("id", "expand").click()
        assert d.execute_script("return Array.from(document.querySelectorAll('details'))"
                                ".every(x => x.open)")
        assert d.execute_script("return window.__pwned === undefined")
        errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        d.quit()
