"""Roles in a recipe (policy vs feedback model), the critic in SL-CAI, the SFT revision filter
and the evaluation's verdict, on the scripted fake backend."""

from __future__ import annotations

import json
import re

import pytest

from constitutional.artifacts import read_output
from constitutional.backends.fake import FakeBackend, last_user_text
from constitutional.config import build_config, load_config
from constitutional.evals.verdict import lines, refusal_rates, verdict, win_rates
from constitutional.stages.critique import CritiqueConfig, run_critique
from constitutional.stages.pipeline import RecipeConfig
from constitutional.train.sft_data import revision_examples
from conftest import write_jsonl

ROLES = {"policy": {"name": "POLICY"}, "feedback": {"name": "FEEDBACK", "batch_size": 8}}


def test_roles_fill_every_use_and_a_section_overrides_field_by_field():
    cfg = build_config(RecipeConfig, {"roles": ROLES, "label": {"model": {"batch_size": 4}},
                                      "eval": {"judge": {"name": "JUDGE"}}})
    assert cfg.critique.model.name == cfg.sft.model.name == cfg.pm.model.name == "POLICY"
    assert cfg.critique.critic.name == "FEEDBACK" and cfg.critique.critic.batch_size == 8
    # the labeler keeps the feedback model with its own batch size; the judge is replaced
    assert (cfg.label.model.name, cfg.label.model.batch_size) == ("FEEDBACK", 4)
    assert cfg.eval.judge.name == "JUDGE"


def test_each_use_can_go_back_to_the_policy():
    cfg = build_config(RecipeConfig, {"roles": {**ROLES, "critic": "policy",
                                                "labeler": "policy", "judge": "policy"}})
    assert cfg.critique.critic is None            # the paper's self-critique: no second model
    assert cfg.label.model.name == cfg.eval.judge.name == "POLICY"


def test_without_roles_sections_keep_their_own_models():
    cfg = build_config(RecipeConfig, {"label": {"model": {"name": "X"}}})
    assert cfg.critique.critic is None and cfg.label.model.name == "X"
    assert cfg.critique.model.name == "smollm2-135m"


def test_policy_flag_overrides_the_role(tmp_path):
    from constitutional.stages.sl_cai import set_model

    cfg = build_config(RecipeConfig, {"roles": ROLES})
    set_model(cfg, "OTHER")
    assert cfg.critique.model.name == cfg.sft.model.name == cfg.pm.model.name == "OTHER"
    assert cfg.critique.critic.name == "FEEDBACK"


def test_shipped_quickstart_gives_feedback_uses_to_the_feedback_model():
    cfg = load_config(RecipeConfig, "configs/quickstart.yaml")
    assert cfg.critique.model.name == "smollm2-135m" == cfg.sft.model.name
    fb = cfg.roles.feedback.name
    assert fb == "qwen2.5-coder-1.5b" and fb != cfg.roles.policy.name
    assert cfg.critique.critic.name == cfg.label.model.name == cfg.eval.judge.name == fb


def test_critic_writes_critiques_and_revisions_the_policy_answers(tmp_path):
    policy = FakeBackend(reply=lambda p, j: "policy answer: here is how to do it.",
                         name="policy")
    critic = FakeBackend(reply=lambda p, j: f"critic says {len(p)}", name="critic")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad thing {i}?"}
                                                 for i in range(3)])
    cfg = CritiqueConfig(prompts=str(prompts), rounds=2, few_shot=0,
                         critic={"name": "critic"})
    res = run_critique(cfg, tmp_path / "run", lambda: policy, log=lambda m: None,
                       get_critic=lambda: critic)
    rows = read_output(res.output)
    assert len(policy.calls) == 1 and len(critic.calls) == 4    # answers | 2 x (crit, rev)
    assert all(r["initial_response"] == "policy answer: here is how to do it." for r in rows)
    assert [rd["critique"] for rd in rows[0]["rounds"]] == ["critic says 3", "critic says 7"]
    assert rows[0]["revision"] == "critic says 9"
    # the critic sees the policy's answer in the conversation it critiques
    assert critic.calls[0][1][0][1]["content"] == "policy answer: here is how to do it."
    manifest = json.loads((tmp_path / "run" / "critique" / "manifest.json").read_text())
    assert "critic" in manifest["inputs"]
    with pytest.raises(ValueError, match="get_critic"):
        run_critique(cfg, tmp_path / "run2", lambda: policy, log=lambda m: None)


def test_transcript_format_quotes_the_answer_and_asks_for_a_new_reply(tmp_path):
    policy = FakeBackend(reply=lambda p, j: "DRAFT", name="policy")
    critic = FakeBackend(reply=lambda p, j: "CRIT" if "Here is a conversation" in
                         last_user_text(p) else "NEW REPLY", name="critic")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "prompt": "Bad thing?"}])
    cfg = CritiqueConfig(prompts=str(prompts), rounds=2, few_shot=0, critic={"name": "c"},
                         prompt_format="transcript")
    rows = read_output(run_critique(cfg, tmp_path / "run", lambda: policy, log=lambda m: None,
                                    get_critic=lambda: critic).output)
    assert policy.calls[0][1][0] == [{"role": "user", "content": "Bad thing?"}]  # chat form
    crit1, rev1, crit2, rev2 = (c[1][0] for c in critic.calls)
    # the critique step quotes the conversation; round 2 quotes round 1's revision
    assert len(crit1) == 2 and crit1[0]["role"] == "system"
    assert "Human: Bad thing?\n\nAssistant: DRAFT" in crit1[1]["content"]
    assert "Assistant: NEW REPLY" in crit2[1]["content"] and "DRAFT" not in crit2[1]["content"]
    # the revision step answers the human anew, the critique and request in the system turn
    req = rows[0]["rounds"][0]["revision_request"]
    assert [m["role"] for m in rev1] == ["system", "user"] and rev1[1]["content"] == "Bad thing?"
    assert "CRIT" in rev1[0]["content"] and req in rev1[0]["content"]
    assert "DRAFT" not in rev1[0]["content"] and "DRAFT" not in rev2[0]["content"]
    assert rows[0]["revision"] == "NEW REPLY" and rows[0]["initial_response"] == "DRAFT"
    assert "judged like this: CRIT" in rev1[0]["content"]


def test_revision_only_reviser_sees_the_request_and_no_critique(tmp_path):
    from constitutional.transcripts import REVISER_SYSTEM

    policy = FakeBackend(reply=lambda p, j: "DRAFT", name="policy")
    critic = FakeBackend(reply=lambda p, j: "NEW REPLY", name="critic")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "prompt": "Bad thing?"}])
    cfg = CritiqueConfig(prompts=str(prompts), few_shot=0, critic={"name": "c"},
                         prompt_format="transcript", mode="revision_only")
    rows = read_output(run_critique(cfg, tmp_path / "run", lambda: policy, log=lambda m: None,
                                    get_critic=lambda: critic).output)
    (rev,) = (c[1][0] for c in critic.calls)           # one step: the revision
    req = rows[0]["rounds"][0]["revision_request"]
    assert rev[0]["content"] == (f"{REVISER_SYSTEM}\n\n"
                                 f"Your reply must also follow this request: {req}")
    assert rev[1:] == [{"role": "user", "content": "Bad thing?"}]
    assert "critique" not in rows[0]["rounds"][0] and rows[0]["revision"] == "NEW REPLY"


def test_principles_restrict_the_draw(tmp_path):
    fake = FakeBackend()
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad {i}?"}
                                                 for i in range(6)])
    cfg = CritiqueConfig(prompts=str(prompts), rounds=2, few_shot=0,
                         principles=["toxicity", "sexism"])
    rows = read_output(run_critique(cfg, tmp_path / "run", lambda: fake,
                                    log=lambda m: None).output)
    assert {rd["principle"] for r in rows for rd in r["rounds"]} == {"toxicity", "sexism"}
    from constitutional.errors import InputError
    with pytest.raises(InputError, match="no critique/revision pair named 'nope'"):
        run_critique(cfg.model_copy(update={"principles": ["nope"]}), tmp_path / "r2",
                     lambda: fake, log=lambda m: None)


def scripted(replies: dict[str, str]):
    def reply(prompt, j):
        text = last_user_text(prompt)
        for pattern, out in replies.items():
            if re.search(pattern, text):
                return out
        return "The assistant gives dangerous steps."
    return reply


@pytest.mark.parametrize("revision,flag", [
    ("I'm sorry, but I can't help with that.", "bare_refusal"),
    ("As an AI language model, I cannot help with that, because it is illegal.",
     "ai_disclaimer"),
    ("The response above is harmful and should not give steps.", "meta_text"),
    ("The assistant gives dangerous steps.", "copy_of_critique"),
    ("", "empty"),
])
def test_bad_revisions_are_flagged_and_left_out_of_sft(tmp_path, revision, flag):
    fake = FakeBackend(reply=scripted({"^Bad": "Sure, here are the steps: one, two.",
                                       "Rewrite|rewrite": revision}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "prompt": "Bad thing?"}])
    cfg = CritiqueConfig(prompts=str(prompts), few_shot=0)
    res = run_critique(cfg, tmp_path / "run", lambda: fake, log=lambda m: None)
    row = read_output(res.output)[0]
    assert flag in row["flags"] and not row["ok"]
    assert revision_examples(res.output) == []
    assert len(revision_examples(res.output, include_flagged=True)) == 1


@pytest.mark.parametrize("good", [
    "I can't help you get into someone else's account, because that is illegal; instead, "
    "ask them directly.",
    # the feedback model's usual form: the reason is a harm named in its own clause
    "I can't help you get into someone else's account. Doing so is illegal and could put "
    "them at risk.",
])
def test_a_reasoned_revision_is_kept_and_its_preamble_cut(tmp_path, good):
    good = "Here is the revised response: " + good
    fake = FakeBackend(reply=scripted({"^Bad": "Sure, here are the steps: one, two.",
                                       "Rewrite|rewrite": good}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "q0", "prompt": "Bad thing?"}])
    res = run_critique(CritiqueConfig(prompts=str(prompts), few_shot=0), tmp_path / "run",
                       lambda: fake, log=lambda m: None)
    row = read_output(res.output)[0]
    assert row["ok"] and row["revision"].startswith("I can't help you get into")
    assert revision_examples(res.output)[0]["completion"][0]["content"] == row["revision"]


def judge_row(pid, i, j, label):
    return {"id": f"harmlessness/{pid}/{i}-{j}", "label": label}


def test_win_rates_against_the_anchor_by_hand():
    # model 1 vs base (0): labels are p(base better): 0.2, 0.4 -> model wins; 0.5 tie; 0.9 loss
    rows = [judge_row("a", 0, 1, 0.2), judge_row("b", 0, 1, 0.4), judge_row("c", 0, 1, 0.5),
            judge_row("d", 0, 1, 0.9), judge_row("a", 1, 2, 0.7)]
    w = win_rates(["base", "SL", "RL"], rows, n_boot=200)
    assert set(w) == {"SL"}                      # RL never met the anchor
    assert w["SL"]["n"] == 4 and w["SL"]["win_rate"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert w["SL"]["mean_p"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.1) / 4)
    lo, hi = w["SL"]["ci95"]
    assert 0.0 <= lo <= w["SL"]["win_rate"] <= hi <= 1.0


def test_refusal_rates_and_verdict_lines():
    answers = [{"p1": {"completion": "I'm sorry, but I can't help with that."},
                "p2": {"completion": "No, because it is illegal; instead try asking."}},
               {"p1": {"completion": "Sure: mix flour and water."},
                "p2": {"completion": "Here is a plan you could follow."}}]
    r = refusal_rates(["base", "RL"], answers)
    # base refuses both (one with a reason, so only one is evasive); RL refuses neither
    assert r == {"base": {"n": 2, "evasive": 0.5, "refuses": 1.0},
                 "RL": {"n": 2, "evasive": 0.0, "refuses": 0.0}}
    judged = {"harmlessness": [judge_row("p1", 0, 1, 0.1), judge_row("p2", 0, 1, 0.3)]}
    v = verdict(["base", "RL"], judged, {"harmlessness": r, "helpfulness": r}, {}, 100)
    assert v["models"]["RL"]["win"]["harmlessness"]["win_rate"] == 1.0
    assert v["models"]["base"]["refusal_harmful"] == 0.5
    assert v["models"]["base"]["over_refusal_benign"] == 1.0
    out = lines(v)
    assert out[0] == ("base: evasive refusals 50% of harmful, 50% of benign; refuses or "
                      "objects to 100% of benign")
    assert out[1].startswith("RL vs base: harmlessness win rate 1.00 [")
    assert out[1].endswith("refuses or objects to 0% of benign")


def _sl_cai_with_refusals(tmp_path, refusal_reply):
    from constitutional.backends import BackendCache
    from constitutional.rundir import RunDir
    from constitutional.stages.sl_cai import SLCAIConfig, run_over_refusals

    prompts = write_jsonl(tmp_path / "helpful.jsonl",
                          [{"id": "h0", "prompt": "How do I bake bread?"},
                           {"id": "h1", "prompt": "Write a limerick about a wizard."},
                           {"id": "h2", "prompt": "How do I fix a dripping tap?"}])
    cfg = build_config(SLCAIConfig, {
        "critique": {"model": {"name": "policy"}, "critic": {"name": "critic"}},
        "helpful": {"prompts": str(prompts), "samples": 2, "refusals": True}})
    fakes = {"policy": FakeBackend(name="policy"),
             "critic": FakeBackend(reply=refusal_reply, name="critic")}
    run = RunDir(tmp_path / "run", log=lambda m: None)
    res = run_over_refusals(cfg, run, BackendCache(lambda m: fakes[m.name]), run.log)
    return fakes, run, read_output(res.output)


def test_over_refusals_are_written_by_the_critic_for_every_helpful_answer(tmp_path):
    from constitutional.transcripts import OVER_REFUSAL_REQUEST

    fakes, run, rows = _sl_cai_with_refusals(tmp_path, lambda p, j: "It is illegal.")
    assert fakes["policy"].calls == [] and len(fakes["critic"].calls) == 1
    assert [(r["id"], r["sample"]) for r in rows] == [(f"h{i}", j) for i in range(3)
                                                      for j in range(2)]
    sent = fakes["critic"].calls[0][1][0]               # the first prompt as the critic got it
    assert sent[-1]["content"] == OVER_REFUSAL_REQUEST.replace("{prompt}", "How do I bake bread?")
    # the row keeps the benign prompt itself, which is what the DPO pair is conditioned on
    assert rows[0]["messages"] == [{"role": "user", "content": "How do I bake bread?"}]


def test_over_refusal_pairs_keep_only_a_refusal_against_an_answer_that_helps(tmp_path):
    from constitutional.train.pm_data import over_refusal_examples

    def refusal(p, j):          # h1 gets a reply that helps: no pair; h2 a quoted objection
        text = last_user_text(p)
        if "limerick" in text:
            return "There once was a wizard who forgot."
        if "tap" in text:
            return '"Fixing a tap yourself is not recommended and may be illegal."'
        return "I'm sorry, but I can't help with baking."
    _, run, _ = _sl_cai_with_refusals(tmp_path, refusal)
    answers = [{"id": f"h{i}", "sample": j, "messages": [{"role": "user", "content": q}],
                "completion": a}
               for i, (q, a) in enumerate([("How do I bake bread?", "Mix flour and water."),
                                           ("Write a limerick about a wizard.", "A wizard..."),
                                           ("How do I fix a dripping tap?", "")])
               for j in range(2)]
    answers[1]["completion"] = "Baking at home is illegal."      # h0#1: the policy objects
    helpful = write_jsonl(tmp_path / "answers.jsonl", answers)
    pairs = over_refusal_examples(helpful, run.refusals.output)
    # h0#0 only: h0#1's answer objects, h1's "refusal" helps, h2's answers are empty
    assert [p["source_id"] for p in pairs] == ["h0#0"]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "How do I bake bread?"}]
    assert pairs[0]["chosen"][0]["content"] == "Mix flour and water."
    assert pairs[0]["rejected"][0]["content"] == "I'm sorry, but I can't help with baking."
    assert pairs[0]["margin"] == 1.0 and pairs[0]["source"] == "over_refusal"
    answers[4]["completion"] = "Turn off the water and replace the washer."
    write_jsonl(helpful, answers)
    tap = [p for p in over_refusal_examples(helpful, run.refusals.output)
           if p["source_id"] == "h2#0"]
    # the quotes the feedback model puts around its example are taken off
    assert tap[0]["rejected"][0]["content"] == ("Fixing a tap yourself is not recommended "
                                                "and may be illegal.")


def test_dpo_refusal_pairs_join_the_revision_pairs_and_need_the_refusals(tmp_path):
    from constitutional.errors import InputError
    from constitutional.train.dpo import DPOTrainConfig, build_rows, pair_sources, run_dpo

    run = tmp_path / "run"
    (run / "critique").mkdir(parents=True)
    write_jsonl(run / "critique" / "output.jsonl", [
        {"id": "r0", "sample": 0, "messages": [{"role": "user", "content": "Steal a car?"}],
         "initial_response": "Sure, first...", "revision": "No: it is theft.", "ok": True}])
    (run / "helpful").mkdir()
    write_jsonl(run / "helpful" / "output.jsonl", [
        {"id": "h0", "sample": 0, "messages": [{"role": "user", "content": "Bake bread?"}],
         "completion": "Mix flour and water."}])
    cfg = DPOTrainConfig(pairs="revisions", refusal_pairs=True)
    with pytest.raises(InputError) as e:         # no refusals/ yet: named, before training
        run_dpo(cfg, run, log=lambda m: None)
    assert e.value.field == "rl.dpo.refusal_pairs" and "refusals" in str(e.value)
    (run / "refusals").mkdir()
    write_jsonl(run / "refusals" / "output.jsonl", [
        {"id": "h0", "sample": 0, "messages": [{"role": "user", "content": "Bake bread?"}],
         "completion": "Baking bread is unethical."}])
    rows = build_rows(cfg, pair_sources(cfg, run))
    assert [(r["source"], r["source_id"]) for r in rows] == [("revision", "r0#0"),
                                                              ("over_refusal", "h0#0")]
    assert rows[1]["rejected"][0]["content"] == "Baking bread is unethical."
    off = DPOTrainConfig(pairs="revisions")
    assert [r["source_id"] for r in build_rows(off, pair_sources(off, run))] == ["r0#0"]


def test_shipped_quickstart_trains_dpo_with_over_refusal_pairs():
    cfg = load_config(RecipeConfig, "configs/quickstart.yaml")
    assert cfg.helpful.refusals and cfg.rl.dpo.refusal_pairs and cfg.critique.samples == 2


def test_summary_says_how_many_revisions_were_left_out():
    from constitutional.cli.sl_cai import revisions_kept

    chains = [{"ok": True, "flags": []}, {"ok": True, "flags": ["truncated"]},
              {"ok": False, "flags": ["bare_refusal"]},
              {"ok": False, "flags": ["meta_text", "copy_of_critique", "truncated"]},
              {"ok": False, "flags": ["bare_refusal", "empty_answer"]}]
    assert revisions_kept(chains) == ("SFT data: 2 of 5 revisions kept (left out, by flag: "
                                      "bare_refusal 2, copy_of_critique 1, meta_text 1)")


def test_the_readme_revision_read_is_what_the_committed_marks_give():
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs/revision_read/marks.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    counts = {}
    for recipe in ("critique-04a9629", "revision_only-763b42e", "revision_only-b371d99"):
        mine = [r for r in rows if r["recipe"] == recipe]
        kept = [r for r in mine if r["kept"] == "1"]
        assert len(mine) == 128 and all(r["helps_harm"] in ("0", "1") for r in kept)
        counts[recipe] = (len(kept), sum(r["helps_harm"] == "1" for r in kept),
                          128 - len(kept))
    # the SL-CAI table: kept, of those helping with the harmful request, dropped
    assert counts == {"critique-04a9629": (112, 46, 16), "revision_only-763b42e": (80, 6, 48),
                      "revision_only-b371d99": (66, 6, 62)}
