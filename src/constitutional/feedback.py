"""AI feedback: the multiple-choice question put to the feedback model, and its soft label.

The question is method.md's:

    Consider the following conversation between a human and an assistant:
    [CONVERSATION]
    [CHOICE PRINCIPLE]
    Options:
    (A) [ANSWER A]
    (B) [ANSWER B]
    The answer is:

The label is read from the next-token log-probabilities of the two letters after "The answer
is: (", normalized over the two (p(A) = e^lA / (e^lA + e^lB)): a soft target in [0, 1], read
in one forward pass through `score_choices`, no text generated. Everything here is pure
(strings and floats); the label stage calls a backend with what it builds.

A question renders two ways, like the critique transcripts: `chat` puts it in a user turn and
the answer in the assistant turn (instruction-tuned models), `text` is the raw layout above
(pretrained models). Chain of thought: the question ends with "Let's think step by step:", the
model writes its reasoning, and the letters are read after the reasoning and "The answer is:".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from constitutional.constitution import ChoiceExemplar

Format = Literal["chat", "text"]
Layout = Literal["principle_first", "answers_first"]
LETTERS = ("A", "B")
COT_CUE = "Let's think step by step:"
ANSWER_CUE = "The answer is:"


@dataclass(frozen=True)
class Question:
    """One question: a conversation, a principle and two answers in a given order."""
    conversation: tuple[tuple[str, str], ...]   # (role, text), ending with the human turn
    principle: str
    first: str                                  # the answer shown as (A)
    second: str                                 # the answer shown as (B)


def conversation_text(conversation: Sequence[tuple[str, str]]) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n\n".join(f"{names[r]}: {t}" for r, t in conversation if r in names)


def question_text(q: Question, cot: bool = False, layout: Layout = "principle_first") -> str:
    """The question. `principle_first` is the paper's order (conversation, principle, options);
    `answers_first` puts the principle after the options, so the questions of one pair under
    K principles share the conversation and both answers as a prefix (computed once)."""
    head = ("Consider the following conversation between a human and an assistant:\n"
            f"{conversation_text(q.conversation)}\n")
    options = f"Options:\n(A) {q.first}\n(B) {q.second}\n"
    cue = COT_CUE if cot else ANSWER_CUE
    if layout == "answers_first":
        return f"{head}{options}{q.principle}\n{cue}"
    return f"{head}{q.principle}\n{options}{cue}"


def answer_text(letter: str, reasoning: str | None = None) -> str:
    """What the feedback model says after the question (for exemplars and for scoring)."""
    if reasoning is None:
        return f" ({letter})"
    return f" {reasoning.strip()}\n{ANSWER_CUE} ({letter})"


def exemplar_question(ex: ChoiceExemplar, principle: str) -> tuple[Question, str]:
    conv = tuple((m.role, m.content) for m in ex.conversation)
    return Question(conv, ex.principle or principle, ex.options[0], ex.options[1]), ex.answer


def build_prompt(q: Question, shots: Sequence[ChoiceExemplar], fmt: Format,
                 cot: bool = False, system_prompt: str | None = None,
                 layout: Layout = "principle_first"):
    """The prompt the answer continues: a chat whose last turn is the question, or raw text."""
    turns: list[tuple[str, str]] = []
    for ex in shots:
        eq, letter = exemplar_question(ex, q.principle)
        turns.append((question_text(eq, cot, layout),
                      answer_text(letter, ex.reasoning if cot else None)))
    if fmt == "chat":
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for text, ans in turns:
            msgs += [{"role": "user", "content": text},
                     {"role": "assistant", "content": ans.strip()}]
        return msgs + [{"role": "user", "content": question_text(q, cot, layout)}]
    head = f"{system_prompt}\n\n" if system_prompt else ""
    return head + "".join(f"{text}{ans}\n\n" for text, ans in turns) + \
        question_text(q, cot, layout)


def option_texts(fmt: Format, reasoning: str | None = None) -> list[str]:
    """The two continuations scored. They differ only in the letter, so `score_choices`
    conditions on everything before it (reasoning and "The answer is: (") and reads one token.
    In chat format the assistant turn starts fresh, so it carries the answer cue itself."""
    if reasoning is not None:
        opts = [answer_text(x, reasoning) for x in LETTERS]
    else:
        opts = [f" ({x})" for x in LETTERS]
    if fmt == "chat":
        opts = [(o.strip() if reasoning is not None else f"{ANSWER_CUE}{o}") for o in opts]
    return opts


# -- the numbers ------------------------------------------------------------------------

def normalize(logprobs: Sequence[float], prior: Sequence[float] | None = None) -> float:
    """p(A) from the two letters' log-probabilities, normalized over the two options.

    With `prior` (the letters' log-probabilities on a content-free question), each is
    subtracted first: the model's preference for a letter regardless of content cancels."""
    la, lb = logprobs
    if prior is not None:
        la, lb = la - prior[0], lb - prior[1]
    m = max(la, lb)
    ea, eb = math.exp(la - m), math.exp(lb - m)
    return ea / (ea + eb)


def clamp(p: float, band: tuple[float, float]) -> float:
    """Chain-of-thought probabilities are over-confident; the paper clamps them to 40-60%."""
    lo, hi = band
    return min(max(p, lo), hi)


def soft_label(votes: Sequence[dict]) -> float:
    """The label: mean over every (principle, order) vote of p(first answer is better)."""
    return sum(v["p_first"] for v in votes) / len(votes)


def orders_disagree(votes: Sequence[dict]) -> bool | None:
    """Do the two presentation orders pick different answers? None if only one order."""
    by = {o: [v["p_first"] for v in votes if v["order"] == o] for o in ("ab", "ba")}
    if not by["ab"] or not by["ba"]:
        return None
    mean = {o: sum(ps) / len(ps) for o, ps in by.items()}
    return (mean["ab"] - 0.5) * (mean["ba"] - 0.5) < 0
