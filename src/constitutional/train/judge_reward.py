"""The constitution as a direct reward (d-RLAIF, Lee et al. 2023): the feedback model rates
each answer, no preference model in between.

The feedback model is asked to rate the answer against a choice principle on a 1-10 scale,
and the rating is read from one forward pass, not generated: the log-probabilities of the ten
ratings (" 1/10" ... " 10/10", from `score_choices`) are normalized over the ten, the reward is
the probability-weighted score, rescaled from [1, 10] to [-1, 1]. The ratings carry "/10"
because where digits are single tokens " 1" is a prefix of " 10": its probability would hold
the mass of "10" too, and the ending is what lets `score_choices` keep them apart. The
principle of each answer is drawn with a seed from the prompt (the same answer to the same
prompt always gets the same principle). `JudgeReward` has both reward signatures: PPO's
(conversations, answers) and TRL's GRPO / RLOO `reward_funcs` (prompts, completions).

`rl.reward: judge` (stages/rl.py) gives this reward to PPO, GRPO or RLOO; the rating model is
`rl.judge` (the recipe's labeler by default) and the principles `rl.judge_constitution`.
Over HTTP `score_choices` reads one token per option, which cannot tell "1" from "10": it
refuses, and this reward needs a local engine (transformers, vLLM).
"""

from __future__ import annotations

import math
from typing import Sequence

from constitutional.constitution import draw_principles
from constitutional.feedback import conversation_text

SCORES = tuple(range(1, 11))
OPTIONS = tuple(f" {s}/10" for s in SCORES)
TEMPLATE = ("Consider the following conversation between a human and an assistant:\n\n"
            "{conversation}\n\nAssistant: {answer}\n\n{principle}\n"
            "Rate the assistant's last response on a scale from 1 (worst) to 10 (best). "
            "Answer in the form N/10.\nRating:")


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

    def __init__(self, backend, constitution, seed: int = 0, model: str | None = None):
        self.backend, self.principles, self.seed = backend, constitution.choice, seed
        self.model, self.fingerprint = model, constitution.fingerprint()

    def identity(self) -> dict:
        """What a training stage's fingerprint holds of this reward (in place of the PM)."""
        from constitutional.artifacts import model_identity

        return {"reward": "judge", "judge": model_identity(self.model) if self.model else None,
                "constitution": self.fingerprint, "template": TEMPLATE, "options": OPTIONS,
                "seed": self.seed}

    def prompt(self, conversation: Sequence[dict], answer: str) -> str:
        turns = tuple((m["role"], m["content"]) for m in conversation if m["role"] != "system")
        key = conversation_text(turns)
        principle = self.principles[draw_principles(len(self.principles), 1, self.seed,
                                                    key)[0]]
        return TEMPLATE.format(conversation=key, answer=answer.strip(),
                               principle=principle.text)

    def __call__(self, prompts, completions, **_) -> list[float]:
        """PPO passes (conversations, answer texts); TRL passes prompts= and completions=
        (chats or strings) by keyword, with more keywords we do not need."""
        answers = [a[-1]["content"] if isinstance(a, list) else a for a in completions]
        asks = [self.prompt(c if isinstance(c, list) else [{"role": "user", "content": c}],
                            a) for c, a in zip(prompts, answers)]
        logprobs = self.backend.score_choices(asks, [list(OPTIONS)] * len(asks))
        return [rescale(expected_score(lp)) for lp in logprobs]
