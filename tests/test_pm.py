"""The preference model: the soft-label loss, PMP data, training on a tiny model, scoring."""

from __future__ import annotations

import json
import math
import random

import pytest

from constitutional.errors import InputError
from constitutional.train.pm_data import (ai_label_examples, held_out, pmp_examples,
                                          pmp_score)
from conftest import run_cai, write_jsonl


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_soft_pairwise_loss_by_hand_and_its_gradient_sign():
    import torch

    from constitutional.train.losses import soft_pairwise_loss

    ra = torch.tensor([1.0, 0.0], requires_grad=True)
    rb = torch.tensor([0.0, 0.0])
    p = torch.tensor([0.8, 1.0])
    loss = soft_pairwise_loss(ra, rb, p)
    # row 0: -(0.8 log s(1) + 0.2 log s(-1)); row 1: -log s(0) = log 2
    want = (-(0.8 * log_sigmoid(1) + 0.2 * log_sigmoid(-1)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)
    loss.backward()
    # d/d ra = (sigmoid(ra - rb) - p) / B: negative -> descent raises the preferred score
    s1 = 1 / (1 + math.exp(-1))
    assert ra.grad.tolist() == pytest.approx([(s1 - 0.8) / 2, (0.5 - 1.0) / 2], abs=1e-6)
    assert all(g < 0 for g in ra.grad.tolist())
    # p = 0.5 with equal scores is a minimum: zero gradient
    x = torch.tensor([0.3], requires_grad=True)
    soft_pairwise_loss(x, torch.tensor([0.3]), torch.tensor([0.5])).backward()
    assert x.grad.item() == pytest.approx(0.0, abs=1e-7)


def test_pmp_scores_and_pairs(tmp_path):
    assert pmp_score(0, False) == 0 and pmp_score(1, False) == 1
    assert pmp_score(3, True) == 3                    # round(log2 4) + 1
    assert pmp_score(-2, True) == -1
    assert pmp_score(1000, False) == round(math.log2(101)) == 7     # votes capped at 100
    path = write_jsonl(tmp_path / "pmp.jsonl", [
        {"question": "Q1", "answers": [{"text": "best", "votes": 15, "accepted": True},
                                       {"text": "ok", "votes": 1, "accepted": False},
                                       {"text": "same as ok", "votes": 1},
                                       {"text": "bad", "votes": -3}]}])
    rows = pmp_examples(path, max_pairs_per_question=None)
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    # scores 5, 1, 1, -1: the tie (ok, same as ok) teaches nothing and is skipped
    assert pairs == {("best", "ok"), ("best", "same as ok"), ("best", "bad"), ("ok", "bad"),
                     ("same as ok", "bad")}
    assert all(r["margin"] == 1.0 for r in rows)
    assert len(pmp_examples(path, max_pairs_per_question=2)) == 2
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q", "answers": [{"text": "x"}]}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: answers\[0\]: expected"):
        pmp_examples(bad)


def test_ai_labels_are_oriented_so_chosen_is_preferred(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [
        {"id": "a", "conversation": [["user", "q"]], "response_a": "x", "response_b": "y",
         "label": 0.2},
        {"id": "b", "conversation": [["user", "q"]], "response_a": "x", "response_b": "y",
         "label": 0.52}])
    rows = ai_label_examples(path)
    assert rows[0]["chosen"][0]["content"] == "y" and rows[0]["margin"] == pytest.approx(0.8)
    assert rows[1]["chosen"][0]["content"] == "x" and rows[1]["margin"] == pytest.approx(0.52)
    assert [r["source_id"] for r in ai_label_examples(path, min_confidence=0.1)] == ["a"]
    ids = [{"source": "ai", "source_id": str(i)} for i in range(2000)]
    share = sum(held_out(r, 0.1, 0) for r in ids) / len(ids)
    assert 0.08 < share < 0.12


def toy_labels(path, n=96, seed=0):
    """Separable: the answer with 'kind' beats the one with 'rude', soft labels 0.8-0.95."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good, bad = f"kind reply {i % 7}", f"rude reply {i % 5}"
        p = rng.uniform(0.8, 0.95)
        a, b, label = (good, bad, p) if rng.random() < 0.5 else (bad, good, 1 - p)
        rows.append({"id": f"t{i}", "conversation": [["user", f"question {i % 11}"]],
                     "response_a": a, "response_b": b, "label": label})
    return write_jsonl(path, rows)


def test_pm_learns_a_separable_toy_set_and_scores_through_the_cli(tmp_path, tiny_llama):
    from constitutional.train.pm import PMTrainConfig, PreferenceModel, run_pm

    labels = toy_labels(tmp_path / "labels.jsonl")
    cfg = PMTrainConfig(model={"name": str(tiny_llama)}, labels=str(labels), epochs=4,
                        learning_rate=2e-3, batch_size=8, eval_fraction=0.25,
                        precision="fp32", logging_steps=2, save_steps=1000)
    result = run_pm(cfg, tmp_path / "run", log=lambda m: None)
    m = json.loads((tmp_path / "run/pm/manifest.json").read_text())
    assert m["status"] == "complete" and len(m["eval"]) == 4          # one per epoch
    assert m["eval"][-1]["accuracy"] > 0.9
    assert (result.output / "model.safetensors").is_file()
    pm = PreferenceModel(result.output)
    conv = [{"role": "user", "content": "question 3"}]
    good, bad = pm.score([conv, conv], ["kind reply 2", "rude reply 4"])
    assert good > bad
    # the same scores from a batch with padding as alone (right padding, last real token)
    assert pm.score([conv], ["kind reply 2"])[0] == pytest.approx(good, abs=1e-4)
    # rerun: reused, nothing retrained
    again = run_pm(cfg, tmp_path / "run", log=lambda m: None)
    assert again.skipped
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "question 3", "response": "kind reply 2"},
                                        {"messages": conv, "completion": "rude reply 4"}])
    r = run_cai(["score", "--pm", str(result.output), "--input", "in.jsonl", "--output",
                 "out.jsonl"], tmp_path)
    assert r.returncode == 0, r.stderr
    scores = [json.loads(x)["score"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert scores == pytest.approx([good, bad], abs=1e-4)


def test_pm_with_pretraining_phase_via_cli(tmp_path, tiny_llama):
    toy_labels(tmp_path / "labels.jsonl", n=24)
    write_jsonl(tmp_path / "pmp.jsonl", [
        {"question": f"Q{i}", "answers": [{"text": "kind reply", "votes": 9, "accepted": True},
                                          {"text": "rude reply", "votes": -1}]}
        for i in range(16)])
    r = run_cai(["train-pm", "--out", "run", "--labels", "labels.jsonl", "--model",
                 str(tiny_llama), "--pmp", "pmp.jsonl", "--epochs", "1", "precision=fp32",
                 "eval_fraction=0.2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run/pm/pmp_model/model.safetensors").is_file()
    assert (tmp_path / "run/pm/model/model.safetensors").is_file()
    assert "held-out accuracy epoch 1" in r.stdout
    bad = run_cai(["train-pm", "--out", "run2", "--labels", "missing.jsonl", "--model",
                   str(tiny_llama)], tmp_path)
    assert bad.returncode == 2 and "missing.jsonl: file not found" in bad.stderr
    assert not (tmp_path / "run2").exists()


def test_pm_lora_trains_adapters_and_the_head_then_saves_a_plain_model(tmp_path, tiny_llama):
    import torch
    from safetensors.torch import load_file

    from constitutional.train.pm import PMTrainConfig, PreferenceModel, run_pm

    labels = toy_labels(tmp_path / "labels.jsonl", n=32)
    cfg = PMTrainConfig(model={"name": str(tiny_llama)}, labels=str(labels), lora=True,
                        epochs=2, learning_rate=5e-3, precision="fp32", eval_fraction=0.0)
    result = run_pm(cfg, tmp_path / "run", log=lambda m: None)
    after = load_file(str(result.output / "model.safetensors"))
    before = load_file(str(tiny_llama / "model.safetensors"))
    assert not any("lora" in k for k in after)                       # merged
    head = [k for k in after if k.startswith("score")]
    assert head and after[head[0]].shape[0] == 1
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)             # adapted layers only
    conv = [{"role": "user", "content": "question 1"}]
    assert len(PreferenceModel(result.output).score([conv], ["kind reply 1"])) == 1


def test_soft_dpo_loss_by_hand():
    import torch

    from constitutional.train.losses import soft_dpo_loss

    # D = (-1 - -2) - (-3 - -2) = 2; beta 0.5 -> x = 1
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
            torch.tensor([-2.0])]
    got = soft_dpo_loss(*args, torch.tensor([0.7]), beta=0.5).item()
    assert got == pytest.approx(-(0.7 * log_sigmoid(1) + 0.3 * log_sigmoid(-1)))
    assert soft_dpo_loss(*args, torch.tensor([1.0]), beta=0.5).item() == \
        pytest.approx(-log_sigmoid(1))                      # p = 1: plain DPO


@pytest.mark.parametrize("mode,lora", [("smooth", True), ("drop", True), ("smooth", False)])
def test_dpo_with_soft_labels_on_a_tiny_model(tmp_path, tiny_llama, mode, lora):
    from constitutional.train.dpo import DPOTrainConfig, build_rows, run_dpo

    labels = toy_labels(tmp_path / "labels.jsonl", n=32)
    cfg = DPOTrainConfig(model={"name": str(tiny_llama)}, labels=str(labels), epochs=3,
                         learning_rate=5e-3 if lora else 1e-3, batch_size=8, precision="fp32",
                         beta=0.5,
                         logging_steps=1, soft_labels=mode, min_confidence=0.35, lora=lora)
    rows = build_rows(cfg, {"labels": str(labels)})
    # min_confidence 0.35 keeps p >= 0.85; "drop" trains them as hard labels
    assert rows and all(r["soft_label"] >= 0.85 for r in rows)
    assert all(r["soft_label"] == 1.0 for r in rows) == (mode == "drop")
    result = run_dpo(cfg, tmp_path / "run", log=lambda m: None)
    hist = json.loads((tmp_path / "run/rl/log_history.json").read_text())
    margins = [h["rewards/margins"] for h in hist if "rewards/margins" in h]
    assert len(margins) >= 3 and margins[-1] > margins[0] and margins[-1] > 0
    assert (result.output / "model.safetensors").is_file()


def critique_rows(path, rows):
    return write_jsonl(path, [
        {"id": f"rt-{i}", "sample": 0, "messages": [{"role": "user", "content": q}],
         "initial_response": orig, "revision": rev, "ok": ok}
        for i, (q, orig, rev, ok) in enumerate(rows)])


def test_pairs_by_construction_take_kept_revisions_over_the_originals(tmp_path):
    from constitutional.train.dpo import DPOTrainConfig, build_rows, pair_sources
    from constitutional.train.pm_data import revision_pair_examples

    path = critique_rows(tmp_path / "critique.jsonl", [
        ("q0", "harmful steps", "a careful answer", True),
        ("q1", "steps", "meta text about the response", False),     # flagged: left out
        ("q2", "same", "same", True)])                               # unchanged: no pair
    rows = revision_pair_examples(path)
    assert [r["source_id"] for r in rows] == ["rt-0#0"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "q0"}]
    assert rows[0]["chosen"][0]["content"] == "a careful answer"
    assert rows[0]["rejected"][0]["content"] == "harmful steps"
    assert rows[0]["margin"] == 1.0 and rows[0]["source"] == "revision"
    with pytest.raises(InputError, match=r"bad.jsonl:1: initial_response"):
        revision_pair_examples(write_jsonl(tmp_path / "bad.jsonl", [
            {"id": "x", "sample": 0, "messages": [], "revision": "r", "ok": True}]))

    run = tmp_path / "run"
    cfg = DPOTrainConfig(pairs="revisions")
    assert pair_sources(cfg, run) == {"revisions": str(run / "critique" / "output.jsonl")}
    assert set(pair_sources(DPOTrainConfig(pairs="both"), run)) == {"labels", "revisions"}
    labels = toy_labels(tmp_path / "labels.jsonl", n=4)
    both = build_rows(DPOTrainConfig(pairs="both"), {"labels": str(labels),
                                                     "revisions": str(path)})
    assert len(both) == 5 and both[-1]["soft_label"] == 1.0


def test_dpo_on_pairs_by_construction_needs_the_critique_stage(tmp_path):
    from constitutional.train.dpo import DPOTrainConfig, run_dpo

    with pytest.raises(InputError, match="run the sl-cai stage first") as e:
        run_dpo(DPOTrainConfig(pairs="revisions"), tmp_path / "run", log=lambda m: None)
    assert e.value.field == "rl.dpo.pairs"


def test_dpo_on_pairs_by_construction_trains_a_tiny_model(tmp_path, tiny_llama):
    from constitutional.train.dpo import DPOTrainConfig, run_dpo

    run = tmp_path / "run"
    (run / "critique").mkdir(parents=True)
    critique_rows(run / "critique" / "output.jsonl", [
        (f"question {i}", f"rude reply {i % 5}", f"kind reply {i % 7}", True) for i in range(24)])
    cfg = DPOTrainConfig(model={"name": str(tiny_llama)}, pairs="revisions", epochs=3,
                         learning_rate=5e-3, batch_size=8, precision="fp32", beta=0.5,
                         logging_steps=1)
    result = run_dpo(cfg, run, log=lambda m: None)
    manifest = json.loads((run / "rl/manifest.json").read_text())
    assert manifest["rows"] == 24 and set(manifest["inputs"]) == {"revisions", "policy"}
    hist = json.loads((run / "rl/log_history.json").read_text())
    margins = [h["rewards/margins"] for h in hist if "rewards/margins" in h]
    assert margins[-1] > margins[0] and margins[-1] > 0
    assert (result.output / "model.safetensors").is_file()
