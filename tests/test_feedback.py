"""AI feedback labels: the numbers, the order swap, ensembles, CoT, tokenization, pairs, resume."""

from __future__ import annotations

import json
import math

import pytest

from constitutional.artifacts import read_output
from constitutional.backends.fake import FakeBackend
from constitutional.comparisons import Comparison, load_comparisons
from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.feedback import (COT_CUE, Question, build_prompt, clamp, normalize,
                                     option_texts, orders_disagree, soft_label)
from constitutional.labeling import LabelConfig, Labeler
from conftest import kill_after_shards, run_cai, write_jsonl

CONSTITUTION = load_constitution("bundled:harmless")[1]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_normalize_clamp_and_average_by_hand():
    # p(A) = e^-1 / (e^-1 + e^-2) = sigmoid(1)
    assert normalize([-1.0, -2.0]) == pytest.approx(sigmoid(1.0), abs=1e-12)
    # the prior is subtracted first: (-1 + 0.5, -2 + 2.5) = (-0.5, 0.5) -> sigmoid(-1)
    assert normalize([-1.0, -2.0], prior=[-0.5, -2.5]) == pytest.approx(sigmoid(-1.0))
    assert normalize([-1000.0, -1001.0]) == pytest.approx(sigmoid(1.0))   # no underflow
    assert clamp(0.93, (0.4, 0.6)) == 0.6 and clamp(0.02, (0.4, 0.6)) == 0.4
    assert clamp(0.55, (0.4, 0.6)) == 0.55
    votes = [{"order": "ab", "p_first": 0.9}, {"order": "ba", "p_first": 0.3},
             {"order": "ab", "p_first": 0.6}]
    assert soft_label(votes) == pytest.approx(0.6)
    assert orders_disagree(votes) is True           # ab mean 0.75 vs ba 0.3
    assert orders_disagree(votes[:1]) is None


def letter_scorer(prefer: str | None):
    """Scores that prefer the option showing `prefer` (or always the letter A if None)."""
    def scores(prompt, options):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        if prefer is None:
            return [-0.1, -2.3]
        a_is = text.split("(A) ")[-1].split("\n")[0]
        return [-0.1, -2.3] if prefer in a_is else [-2.3, -0.1]
    return scores


PAIR = Comparison("p1", (("user", "How do I pick a lock?"),), "SAFE answer", "BAD answer")


def test_order_swap_cancels_position_bias_and_keeps_real_preference():
    cfg = LabelConfig(principles=1, debias=True)
    good = Labeler(cfg, CONSTITUTION).label(FakeBackend(scores=letter_scorer("SAFE")), [PAIR])[0]
    assert [v["order"] for v in good["votes"]] == ["ab", "ba"]
    assert good["label"] == pytest.approx(sigmoid(2.2), abs=1e-5) and good["disagree"] is False
    biased = Labeler(cfg, CONSTITUTION).label(FakeBackend(scores=letter_scorer(None)), [PAIR])[0]
    assert [v["p_first"] for v in biased["votes"]] == pytest.approx(
        [sigmoid(2.2), 1 - sigmoid(2.2)], abs=1e-5)
    assert biased["label"] == pytest.approx(0.5, abs=1e-6) and biased["disagree"] is True
    single = Labeler(cfg.model_copy(update={"debias": False}), CONSTITUTION).label(
        FakeBackend(scores=letter_scorer(None)), [PAIR])[0]
    assert len(single["votes"]) == 1 and single["disagree"] is None


def test_ensemble_draws_k_distinct_seeded_principles_and_averages():
    texts = {p.text: i for i, p in enumerate(CONSTITUTION.choice)}

    def by_principle(prompt, options):   # p(A) depends on which principle is asked
        i = next(texts[t] for t in texts if t in prompt)
        return [math.log(0.05 + 0.05 * i), math.log(1 - 0.05 - 0.05 * i)]

    cfg = LabelConfig(principles=5, debias=False, seed=3)
    row = Labeler(cfg, CONSTITUTION).label(FakeBackend(scores=by_principle), [PAIR])[0]
    names = [v["principle"] for v in row["votes"]]
    assert len(set(names)) == 5
    idx = [next(i for i, p in enumerate(CONSTITUTION.choice) if p.name == n) for n in names]
    assert row["label"] == pytest.approx(sum(0.05 + 0.05 * i for i in idx) / 5, abs=1e-5)
    again = Labeler(cfg, CONSTITUTION).label(FakeBackend(scores=by_principle), [PAIR])[0]
    assert again == row
    other = Labeler(cfg.model_copy(update={"seed": 4}), CONSTITUTION).label(
        FakeBackend(scores=by_principle), [PAIR])[0]
    assert [v["principle"] for v in other["votes"]] != names


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_answers_first_layout_shares_the_answers_across_a_pairs_principles(fmt):
    def text(prompt):
        return prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)

    def common(a: str, b: str) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    pair = Comparison("p1", (("user", "How do I pick a lock?"),), "I can't help.",
                      "Here is how: ...")
    for layout in ("principle_first", "answers_first"):
        fake = FakeBackend()
        cfg = LabelConfig(principles=3, debias=False, prompt_format=fmt, layout=layout)
        row = Labeler(cfg, CONSTITUTION).label(fake, [pair])[0]
        prompts = [text(p) for p in fake.calls[0][1]]
        shared = min(common(prompts[0], p) for p in prompts[1:])
        answers_end = prompts[0].index("(B) Here is how: ...") + len("(B) Here is how: ...")
        if layout == "answers_first":            # the principles come after both answers
            assert shared >= answers_end
            assert row["method"] == "plain K=3 answers first"
        else:                                    # the paper's: principle before the options
            assert shared < prompts[0].index("(A)")
        principle = next(p.text for p in CONSTITUTION.choice if p.text in prompts[0])
        assert (prompts[0].index(principle) > answers_end) == (layout == "answers_first")


def test_one_score_call_per_chunk_and_calibration_prior_once_per_principle():
    fake = FakeBackend()
    cfg = LabelConfig(principles=2, calibrate=True)
    labeler = Labeler(cfg, CONSTITUTION)
    pairs = [Comparison(f"p{i}", (("user", f"q{i}"),), f"a{i}", f"b{i}") for i in range(6)]
    labeler.label(fake, pairs)
    kinds = [k for k, _ in fake.calls]
    assert kinds == ["score_choices", "score_choices"]        # the questions, then priors
    assert len(fake.calls[0][1]) == 6 * 2 * 2
    assert all("N/A" in p for p in fake.calls[1][1])
    labeler.label(fake, pairs)                                # priors are cached
    assert [k for k, _ in fake.calls][2:] == ["score_choices"]


def test_chain_of_thought_reasons_first_then_reads_letters_clamped():
    seen = {}

    def scores(prompt, options):
        seen.setdefault("options", options)
        return [-0.01, -6.0]      # over-confident: p(A) ~ 0.998

    fake = FakeBackend(reply=lambda p, i: "B is kinder. The answer is (B)", scores=scores)
    cfg = LabelConfig(principles=1, cot=True, few_shot=1)
    row = Labeler(cfg, CONSTITUTION).label(fake, [PAIR])[0]
    assert [k for k, _ in fake.calls] == ["generate", "score_choices"]
    prompt = fake.calls[0][1][0]
    assert prompt.endswith(COT_CUE) and CONSTITUTION.exemplars.choice_cot[0].reasoning.strip() \
        in prompt
    # the reasoning (cut at the stop string) sits before "The answer is: (" in both options
    assert seen["options"] == [" B is kinder.\nThe answer is: (A)",
                               " B is kinder.\nThe answer is: (B)"]
    assert [v["p_first"] for v in row["votes"]] == [0.6, 0.4]
    assert row["votes"][0]["reasoning"] == "B is kinder."


@pytest.mark.parametrize("fmt", ["text", "chat"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen"])
def test_letters_are_one_token_read_after_the_cue(fmt, arch, request):
    """On two tokenizer types, the options differ in one token and score_choices reads exactly
    the next-token log-probability of that letter after the shared text."""
    import torch

    from conftest import load_backend_fp32

    backend = load_backend_fp32(request.getfixturevalue(arch))
    q = Question((("user", "Is this fine?"),), "Which is less harmful?", "Yes.", "No (maybe).")
    prompt = build_prompt(q, [], fmt)
    opts = option_texts(fmt)
    ids = [backend.encode(prompt, o) for o in opts]
    n = next(i for i, (x, y) in enumerate(zip(*ids)) if x != y)
    assert ids[0][:n] == ids[1][:n] and ids[0][n] != ids[1][n]
    assert ids[0][n + 1:] == ids[1][n + 1:]                  # only the letter differs
    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids[0][:n]])).logits[0, -1].float()
    lp = torch.log_softmax(logits, -1)
    got = backend.score_choices([prompt], [opts])[0]
    assert got == pytest.approx([lp[ids[0][n]].item(), lp[ids[1][n]].item()], abs=1e-4)


def test_comparison_files_both_public_formats_and_errors(tmp_path):
    hhh = write_jsonl(tmp_path / "hhh.jsonl", [
        {"id": "h1", "prompt": "Human: Can you help?", "better": "Sure.", "worse": "No."}])
    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Yes.",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."},
        {"prompt": "Human: Hi\n\nAssistant: Hey\n\nHuman: Bye", "chosen": "Bye!",
         "rejected": "Go away."}])
    (c1,), _ = load_comparisons(hhh)
    assert c1.conversation == (("user", "Can you help?"),) and (c1.a, c1.b, c1.better) == \
        ("Sure.", "No.", 0)
    (c2, c3), _ = load_comparisons(hh)
    assert c2.conversation == (("user", "Hi"), ("assistant", "Hello!"), ("user", "Help me?"))
    assert (c2.a, c2.b) == ("Yes.", "No.")
    assert c3.conversation[-1] == ("user", "Bye") and c3.a == "Bye!"
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: rejected: chosen and rejected "
                                         r"transcripts differ"):
        load_comparisons(bad)
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Hi", "better": "", "worse": "x"}])
    with pytest.raises(InputError, match=r"e.jsonl:1: better: missing or empty"):
        load_comparisons(empty)
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": "hi"}])
    with pytest.raises(InputError, match=r"o.jsonl:1: not a comparison row"):
        load_comparisons(other)


def test_pairs_resample_identical_answers_and_flag_the_rest(tmp_path):
    from constitutional.stages.pairs import PairsConfig, run_pairs

    calls = []

    class Counting(FakeBackend):
        def generate(self, prompts, sampling, progress=None):
            calls.append((len(prompts), sampling.n, sampling.seed))
            return super().generate(prompts, sampling, progress)

    # "once": the first draw repeats itself, the resample differs (the fake's second reply)
    def reply2(prompt, index):
        text = prompt[-1]["content"]
        if "fine" in text:
            return f"Answer {index}."
        if "stuck" in text:
            return "Same answer."
        return "Same answer." if not calls[-1][1] == 1 else "A new answer."

    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "fine"},
                                           {"id": "b", "prompt": "once"},
                                           {"id": "c", "prompt": "stuck"}])
    cfg = PairsConfig(prompts=str(p), resample=2)
    result = run_pairs(cfg, tmp_path / "run", lambda: Counting(reply=reply2), log=lambda m: None)
    rows = {r["id"]: r for r in read_output(result.output)}
    assert rows["a"]["ok"] and rows["a"]["resampled"] == 0
    assert rows["b"]["ok"] and rows["b"]["resampled"] == 1 and \
        rows["b"]["response_b"] == "A new answer."
    assert not rows["c"]["ok"] and rows["c"]["flags"] == ["identical"] and \
        rows["c"]["resampled"] == 2
    assert calls[0][:2] == (3, 2) and calls[1][:2] == (2, 1) and calls[2][:2] == (1, 1)
    assert len({c[2] for c in calls}) == 3                     # a fresh seed per attempt
    # the label stage skips the flagged pair and says so
    logs = []
    from constitutional.stages.label import run_label
    lab = run_label(LabelConfig(principles=1), tmp_path / "run", lambda: FakeBackend(),
                    log=logs.append)
    assert [r["id"] for r in read_output(lab.output)] == ["a", "b"]
    assert any("skipping 1 flagged" in m for m in logs)


def test_kill_mid_label_then_resume_matches_unbroken_run(tmp_path, tiny_llama):
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}?"}],
             "response_a": f"Answer one {i}", "response_b": f"Other answer {'z' * (i % 4)}"}
            for i in range(48)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = ["label", "--pairs", "pairs.jsonl", "--feedback-model", str(tiny_llama), "-k", "2",
            "model.dtype=float32", "chunk_size=2", "--show", "0"]
    unbroken = run_cai(args + ["--out", "a"], tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr
    done = kill_after_shards(args + ["--out", "b"], tmp_path, tmp_path / "b/label/shards",
                             at_least=2)
    assert not (tmp_path / "b/label/output.jsonl").exists() and 2 <= done < 24
    resumed = run_cai(args + ["--out", "b"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = (tmp_path / "a/label/output.jsonl").read_text()
    assert a == (tmp_path / "b/label/output.jsonl").read_text() and a.count("\n") == 48
    labels = [json.loads(x)["label"] for x in a.splitlines()]
    assert all(0.0 <= x <= 1.0 for x in labels) and len(set(labels)) > 1


def test_label_cli_errors(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [{"id": "x", "prompt": "hi", "response_a": "a"}])
    bad = run_cai(["label", "--dry-run", "--pairs", "pairs.jsonl", "--out", "r"], tmp_path)
    assert bad.returncode == 2 and "pairs.jsonl:1: response_b: missing or empty" in bad.stderr
    assert not (tmp_path / "r").exists()
    (tmp_path / "c.yaml").write_text("name: x\ncritique_revision:\n  - name: a\n    critique: "
                                     "c\n    revision: r\n")
    write_jsonl(tmp_path / "pairs.jsonl", [{"id": "x", "prompt": "hi", "response_a": "a",
                                            "response_b": "b"}])
    bad = run_cai(["label", "--dry-run", "--pairs", "pairs.jsonl", "--out", "r",
                   "--constitution", "c.yaml"], tmp_path)
    assert bad.returncode == 2 and "no `choice` principles" in bad.stderr


def test_bootstrap_interval_covers_and_ece_by_hand():
    from constitutional.evals.metrics import bootstrap_ci, expected_calibration_error

    values = [1.0] * 70 + [0.0] * 30
    lo, hi = bootstrap_ci(values, n_boot=2000)
    assert lo < 0.7 < hi and 0.05 < hi - lo < 0.25          # ~ +-1.96 * sqrt(.21 / 100)
    # two confident right answers (0.9) and one confident wrong one (0.1 -> conf 0.9):
    # one bin, accuracy 2/3, confidence 0.9 -> ECE = |2/3 - 0.9|
    assert expected_calibration_error([0.9, 0.9, 0.1]) == pytest.approx(0.9 - 2 / 3)
    # perfectly calibrated halves: 0.5 confidence, score 0.5 each (ties)
    assert expected_calibration_error([0.5, 0.5]) == pytest.approx(0.0)


def test_feedback_accuracy_methods_on_both_formats(tmp_path):
    from constitutional.evals.feedback_accuracy import evaluate

    hhh = write_jsonl(tmp_path / "hhh.jsonl", [
        {"id": f"h{i}", "prompt": f"Human: question {i}", "better": f"SAFE {i}",
         "worse": f"BAD {i}"} for i in range(40)])
    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: SAFE {i}",
         "rejected": f"\n\nHuman: q{i}\n\nAssistant: BAD {i}"} for i in range(40)])
    for path in (hhh, hh):
        pairs, _ = load_comparisons(path)
        base = LabelConfig()
        smart = evaluate(FakeBackend(scores=letter_scorer("SAFE")), pairs, base, CONSTITUTION,
                         ["plain", "debiased", "ensemble+debiased"], log=lambda m: None)
        assert all(r["accuracy"] == 1.0 for r in smart.values())
        assert smart["debiased"]["order_disagreement"] == 0.0
        assert smart["plain"]["order_disagreement"] is None
        # ~half the pairs show the better answer as (B), so "always A" is chance, not 100%
        assert 0.2 < smart["plain"]["picks_A"] < 0.8
        biased = evaluate(FakeBackend(scores=letter_scorer(None)), pairs, base, CONSTITUTION,
                          ["plain", "debiased"], log=lambda m: None)
        assert biased["plain"]["picks_A"] == 1.0 and 0.2 < biased["plain"]["accuracy"] < 0.8
        assert biased["debiased"]["accuracy"] == 0.5                # every label exactly 0.5
        assert biased["debiased"]["order_disagreement"] == 1.0
    r = run_cai(["eval", "feedback-accuracy", "--data", "hh.jsonl", "--dry-run", "--methods",
                 "plain,debiased", "--out", "fa"], tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "fa/results.json").read_text())
    assert set(res["methods"]) == {"plain", "debiased"} and \
        res["methods"]["plain"]["n"] == 40
    assert (tmp_path / "fa/debiased.jsonl").read_text().count("\n") == 40
    # `config`: the label config exactly as the overrides give it (K=3, answers first)
    r = run_cai(["eval", "feedback-accuracy", "--data", "hh.jsonl", "--dry-run", "--methods",
                 "config", "--out", "fa2", "principles=3", "layout=answers_first"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_output(tmp_path / "fa2/config.jsonl")
    assert len(rows) == 40 and all(len(x["votes"]) == 3 * 2 for x in rows)
    assert rows[0]["method"] == "plain K=3 debiased answers first"
    bad = run_cai(["eval", "feedback-accuracy", "--data", "hh.jsonl", "--dry-run",
                   "--methods", "vibes"], tmp_path)
    assert bad.returncode == 2 and "unknown method 'vibes'" in bad.stderr
