"""The constitution as a direct reward (issue 20, part 3, the reward itself): the
probability-weighted score against hand-computed numbers, PPO raising a scripted judge's
reward on a tiny model, exclusive ratings from the engine, and `rl.reward: judge` in a run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from test_pipeline import recipe
from test_ppo import toy_trainer

from conftest import load_backend_fp32, run_cai
from constitutional.backends.base import option_span

from constitutional.backends.fake import FakeBackend
from constitutional.constitution import load_constitution
from constitutional.train.judge_reward import (OPTIONS, JudgeReward, expected_score,
                                               rescale)


def test_the_probability_weighted_score_by_hand():
    # all mass on "7": 7; even mass on "2" and "4": 3; uniform: 5.5
    assert expected_score([0.0 if s == 7 else -1e9 for s in range(1, 11)]) == pytest.approx(7)
    two_four = [math.log(0.5) if s in (2, 4) else -1e9 for s in range(1, 11)]
    assert expected_score(two_four) == pytest.approx(3.0)
    assert expected_score([-2.3] * 10) == pytest.approx(5.5)
    # log-probs 0, -1 on "10", "9", the rest far below: (10 + 9 e^-1) / (1 + e^-1)
    lp = [-1e9] * 8 + [-1.0, 0.0]
    assert expected_score(lp) == pytest.approx((10 + 9 * math.exp(-1)) / (1 + math.exp(-1)))
    assert (rescale(1.0), rescale(5.5), rescale(10.0)) == (-1.0, 0.0, 1.0)


def test_one_scoring_call_per_batch_with_a_principle_per_prompt():
    _, c = load_constitution("bundled:harmless")
    fake = FakeBackend(scores=lambda p, opts: [0.0 if o == " 10/10" else -9.0 for o in opts])
    judge = JudgeReward(fake, c)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    rewards = judge(convs, ["an answer"] * 3)
    assert rewards == pytest.approx([rescale(expected_score(
        [-9.0] * 9 + [0.0]))] * 3)
    calls = [x for x in fake.calls if x[0] == "score_choices"]
    assert len(calls) == 1 and len(calls[0][1]) == 3
    prompt = calls[0][1][0]
    assert "Human: question 0" in prompt and prompt.endswith("Rating:")
    assert any(p.text in prompt for p in c.choice)
    # TRL's reward_funcs signature gives the same numbers
    completions = [[{"role": "assistant", "content": "an answer"}]] * 3
    assert judge(prompts=convs, completions=completions, completion_ids=None) == rewards
    assert OPTIONS[0] == " 1/10" and OPTIONS[-1] == " 10/10"


def test_ppo_raises_a_scripted_judges_reward(tiny_llama):
    """The judge rates an answer by its share of the letter "e"; PPO with the judge as its
    reward learns to write more of them."""
    _, c = load_constitution("bundled:harmless")

    def rates_e(prompt, options):
        answer = prompt.split("\n\nAssistant: ")[-1].split("\n\n")[0]
        share = answer.count("e") / max(1, len(answer))
        target = 1 + 9 * min(1.0, 8 * share)                 # more "e": higher score
        return [-(int(o.split("/")[0]) - target) ** 2 for o in options]
    trainer = toy_trainer(tiny_llama, 3e-4, lora=False, kl_coef=0.0)
    trainer.reward_fn = JudgeReward(FakeBackend(scores=rates_e), c)
    convs = [[{"role": "user", "content": f"tell me {i}"}] for i in range(16)]
    logs = [trainer.step(convs, seed=k) for k in range(25)]
    first = sum(r["reward"] for r in logs[:5]) / 5
    last = sum(r["reward"] for r in logs[-5:]) / 5
    assert last > first + 0.1, [round(r["reward"], 3) for r in logs]
    assert all(-1.0 <= r["reward"] <= 1.0 for r in logs)       # the judge's scale


def test_option_span_keeps_the_ending_that_tells_nested_options_apart():
    P = [7, 8]                                        # the prompt's tokens
    # " (A)" / " (B)": "(" is conditioned on, ")" dropped, one token scored each
    assert option_span([P + [1, 10, 3], P + [1, 11, 3]]) == (3, 1)
    # " 1/10" / " 5/10" / " 10/10" with single-digit tokens (" ", digit..., "/", "1", "0"):
    # dropping all of "/10" would leave "1" a prefix of "10"; keeping "/" keeps them apart
    one, five, ten = P + [0, 1, 9, 1, 0], P + [0, 5, 9, 1, 0], P + [0, 1, 0, 9, 1, 0]
    assert option_span([one, five, ten]) == (3, 2)
    assert option_span([one, five]) == (3, 3)         # no nesting: the whole ending goes
    # nested with no shared ending at all: nothing can be dropped
    assert option_span([P + [0, 1], P + [0, 1, 0]]) == (3, 0)


def test_the_engine_scores_1_and_10_as_exclusive_ratings(tiny_llama):
    """On a tokenizer with single-digit tokens, " 1/10" is read as "1" then "/" (not "1"
    alone, which would hold the mass of "10" too), each number against a plain forward."""
    import torch

    backend = load_backend_fp32(tiny_llama, log=lambda m: None)
    tok, model = backend.tokenizer, backend.model
    prompt = "Rate it.\nRating:"
    assert tok(" 10/10", add_special_tokens=False)["input_ids"][:2] == \
        tok(" 1/10", add_special_tokens=False)["input_ids"][:2]        # nested digits
    got = backend.score_choices([prompt], [list(OPTIONS)])[0]

    def by_hand(option: str, dropped: int = 2) -> float:
        """Log-prob of the option's tokens after the shared " ", less the last `dropped`
        ("10" of "/10", shared by all ten)."""
        ids = tok(prompt + option)["input_ids"]
        base = len(tok(prompt + " ")["input_ids"])          # the shared " " is conditioned on
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return sum(logits[t - 1, ids[t]].item() for t in range(base, len(ids) - dropped))
    for option, value in zip(OPTIONS, got):
        assert value == pytest.approx(by_hand(option), abs=1e-4), option
    # "1" alone, what dropping all of "/10" would score, holds more mass than "1" then "/"
    one_alone = by_hand(" 1", dropped=0)
    assert one_alone < 0 and got[0] < one_alone - 1e-3


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_rl_reward_judge_trains_with_no_preference_model(tmp_path, tiny_llama, method):
    args = recipe(tmp_path, tiny_llama, method=method)
    shutil.copytree(tiny_llama, tmp_path / "run/sl_model/model")
    r = run_cai(args + ["--out", "run", "--from", "rl", "--until", "rl", "rl.reward=judge",
                        "rl.grpo.max_steps=1", "rl.grpo.precision=fp32",
                        "rl.grpo.max_tokens=6", "rl.grpo.batch_size=4"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run/pm").exists()
    m = json.loads((tmp_path / "run/rl/manifest.json").read_text())
    assert m["status"] == "complete" and m["inputs"]["reward"] == "judge"
    assert "reward_model" not in m["inputs"] and m["inputs"]["constitution"]
    # the judge's ratings went through the run's backend: in the call log
    calls = [json.loads(x) for x in (tmp_path / "run/calls.jsonl").read_text().splitlines()]
    rated = [c for c in calls if "Answer in the form N/10" in json.dumps(c)]
    assert rated, "no rating call in calls.jsonl"
    if method == "ppo":
        assert "RL (PPO): the judge's reward on" in r.stdout
        evals = [json.loads(x) for x in (tmp_path / "run/rl/eval.jsonl").read_text()
                 .splitlines()]
        assert all(-1 <= e["reward"] <= 1 for e in evals)
    # the PM reward in the same run needs the pm stage: one line that says so
    again = run_cai(args + ["--out", "run", "--from", "rl", "--until", "rl"], tmp_path)
    assert again.returncode == 2 and "no preference model in this run yet" in again.stderr
    assert "rl.reward=judge" in again.stderr


def test_reward_judge_is_refused_for_dpo_and_the_labeler_rates():
    from constitutional.config import build_config
    from constitutional.errors import InputError
    from constitutional.stages.pipeline import RecipeConfig

    with pytest.raises(InputError, match="online methods"):
        build_config(RecipeConfig, {"rl": {"method": "dpo", "reward": "judge"}})
    cfg = build_config(RecipeConfig, {"roles": {"policy": {"name": "P"},
                                                "feedback": {"name": "F"}},
                                      "rl": {"reward": "judge"}})
    assert cfg.rl.judge.name == "F"
    cfg = build_config(RecipeConfig, {"roles": {"policy": {"name": "P"}, "feedback": {
        "name": "F"}, "labeler": "policy"}, "rl": {"reward": "judge"}})
    assert cfg.rl.judge.name == "P"
