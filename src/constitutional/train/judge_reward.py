"""The constitution as a direct reward (d-RLAIF, Lee et al. 2023): the feedback model rates
each answer, no preference model in between.

The feedback model is asked to rate the answer against a choice principle on a 1-10 scale,
and the rating is read from one forward pass, not generated: the log-probabilities of the ten
score tokens (" 1" ... " 10", from `score_choices`) are normalized over the ten, the reward is
the probability-weighted score, rescaled from [1, 10] to [-1, 1]. The principle of each
answer is drawn with a seed from the prompt (the same answer to the same prompt always gets
the same principle). `JudgeReward` has both reward signatures: PPO's (conversations, answers)
and TRL's GRPO / RLOO `reward_funcs` (prompts, completions).

Built and tested here as the reward function; `rl.reward: judge` wiring into the recipe and
the README's comparison with the PM reward are not done yet (issue 20).
"""

from __future__ import annotations

import math
from typing import Sequence

from constitutional.constitution import draw_principles
from constitutional.feedback import conversation_text

SCORES = tuple(range(1, 11))
OPTIONS = tuple(f" {s}" for s in SCORES)
TEMPLATE = ("Consider the following conversation between a human and an assistant:\n\n"
            "{conversation}\n\nAssistant: {answer}\n\n{principle}\n"
            "Rate the assistant's last response on a scale from 1 (worst) to 10 (best). "
            "Answer with the number only.\nRating:")


def expected_score(logprobs: Sequence[float]) -> float:
    """The probability-weighted score from the ten score tokens' log-probabilities."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return sum(s * w for s, w in zip(SCORES, weights)) / sum(weights)


def rescale(score: float) -> float:
    """[1, 10] -> [-1, 1]."""
    return (score - 5.5) / 4.5


class JudgeReward:
    """Rewards from a feedback-model backend and a constitution's choice principles."""

    def __init__(self, backend, constitution, seed: int = 0):
        self.backend, self.principles, self.seed = backend, constitution.choice, seed

    def prompt(self, conversation: Sequence[dict], answer: str) -> str:
        turns = tuple((m["role"], m["content"]) for m in conversation if m["role"] != "system")
        key = conversation_text(turns)
        principle = self.principles[draw_principles(len(self.principles), 1, self.seed,
                                                    key)[0]]
        return TEMPLATE.format(conversation=key, answer=answer.strip(),
                               principle=principle.text)

    def __call__(self, conversations, answers, **_) -> list[float]:
        answers = [a[-1]["content"] if isinstance(a, list) else a for a in answers]
        prompts = [self.prompt(c if isinstance(c, list) else [{"role": "user", "content": c}],
                               a) for c, a in zip(conversations, answers)]
        logprobs = self.backend.score_choices(prompts, [list(OPTIONS)] * len(prompts))
        return [rescale(expected_score(lp)) for lp in logprobs]
