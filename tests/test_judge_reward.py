"""The constitution as a direct reward (issue 20, part 3, the reward itself): the
probability-weighted score against hand-computed numbers, and PPO raising a scripted judge's
reward on a tiny model."""

from __future__ import annotations

import math

import pytest
from test_ppo import toy_trainer

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
    fake = FakeBackend(scores=lambda p, opts: [0.0 if o == " 10" else -9.0 for o in opts])
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
    assert judge(convs, completions, completion_ids=None) == rewards
    assert OPTIONS[0] == " 1" and OPTIONS[-1] == " 10"


def test_ppo_raises_a_scripted_judges_reward(tiny_llama):
    """The judge rates an answer by its share of the letter "e"; PPO with the judge as its
    reward learns to write more of them."""
    _, c = load_constitution("bundled:harmless")

    def rates_e(prompt, options):
        answer = prompt.split("\n\nAssistant: ")[-1].split("\n\n")[0]
        share = answer.count("e") / max(1, len(answer))
        target = 1 + 9 * min(1.0, 8 * share)                 # more "e": higher score
        return [-(int(o) - target) ** 2 for o in options]
    trainer = toy_trainer(tiny_llama, 3e-4, lora=False, kl_coef=0.0)
    trainer.reward_fn = JudgeReward(FakeBackend(scores=rates_e), c)
    convs = [[{"role": "user", "content": f"tell me {i}"}] for i in range(16)]
    logs = [trainer.step(convs, seed=k) for k in range(25)]
    first = sum(r["reward"] for r in logs[:5]) / 5
    last = sum(r["reward"] for r in logs[-5:]) / 5
    assert last > first + 0.1, [round(r["reward"], 3) for r in logs]
    assert all(-1.0 <= r["reward"] <= 1.0 for r in logs)       # the judge's scale
