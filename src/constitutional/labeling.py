"""AI feedback labels for answer pairs: the labeler's config and the labeler itself.

For each pair, K choice principles are drawn (seeded by the pair's id), and each is asked in
both orders (A/B and B/A: position debiasing, on by default). Every question's label is the
feedback model's p(letter) normalized over the two letters, read by `score_choices` in one
forward pass: the questions of a whole chunk go in one call, and the backend computes the
prefix they share (few-shot exemplars, the conversation) once. The soft label is the mean of
p(response_a is better) over all votes; every vote is kept in the row.

Options: chain of thought (the model reasons first; its probabilities are clamped to a band,
40-60% by default, as in the paper), few-shot exemplars from the constitution, prior
calibration (subtract the letters' log-probabilities on a content-free question, once per
principle), and the chat template or the paper's raw-text layout.

The `label` stage (stages/label.py), the evaluation's judge and `cai eval feedback-accuracy`
all label through `Labeler`.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, field_validator

from constitutional.backends.base import Sampling
from constitutional.comparisons import Comparison
from constitutional.config import NOT_RESULTS, ModelConfig, SamplingConfig, StrictModel
from constitutional.constitution import Constitution, draw_principles
from constitutional.feedback import (Question, build_prompt, clamp, normalize, option_texts,
                                     orders_disagree, soft_label)

CONTENT_FREE = "N/A"


class LabelConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The feedback model.")
    pairs: str | None = Field(None, description="Pairs to label (default: RUN/pairs/"
                              "output.jsonl); any file `cai eval feedback-accuracy` reads.",
                              json_schema_extra=NOT_RESULTS)      # hashed as an input
    constitution: str = Field("bundled:harmless", description="Where the choice principles "
                              "and exemplars come from.")
    principles: int = Field(8, ge=1, description="Choice principles per pair (an ensemble: "
                            "their probabilities are averaged).")
    debias: bool = Field(True, description="Ask in both orders and average.")
    cot: bool = Field(False, description="Chain of thought: reason first, then read the "
                      "letters; probabilities clamped to cot_band.")
    cot_band: tuple[float, float] = Field((0.4, 0.6), description="Clamp band for CoT.")
    cot_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=96,
                                               stop=["\nHuman:", "The answer is",
                                                     "\nConsider the following"]),
        description="Decoding of the reasoning.")
    few_shot: int | None = Field(0, ge=0, description="Choice exemplars before each question "
                                 "(None: all in the constitution; CoT uses choice_cot).")
    prompt_format: Literal["chat", "text"] = Field(
        "text", description="text: the paper's raw layout; chat: the model's chat template.")
    layout: Literal["principle_first", "answers_first"] = Field(
        "principle_first", description="principle_first: the paper's question (conversation, "
        "principle, options); answers_first: the principle after the options, so a pair's K "
        "principles share the conversation and both answers as a prefix.")
    calibrate: bool = Field(False, description="Subtract the letters' prior log-probabilities "
                            "(from a content-free question) before normalizing.")
    system_prompt: str | None = None
    seed: int = Field(0, description="Seeds the principle draw of each pair.")
    chunk_size: int = Field(64, ge=1, description="Pairs per resumable shard.",
                            json_schema_extra=NOT_RESULTS)
    log_calls: bool = Field(True, json_schema_extra=NOT_RESULTS)

    @field_validator("cot_band")
    @classmethod
    def _band(cls, v):
        if not 0.0 <= v[0] <= 0.5 <= v[1] <= 1.0:
            raise ValueError("cot_band must be (low, high) with 0 <= low <= 0.5 <= high <= 1")
        return v


def method_name(cfg: LabelConfig) -> str:
    parts = ["cot" if cfg.cot else "plain", f"K={cfg.principles}"]
    if cfg.debias:
        parts.append("debiased")
    if cfg.calibrate and not cfg.cot:
        parts.append("calibrated")
    if cfg.layout == "answers_first":
        parts.append("answers first")
    return " ".join(parts)


class Labeler:
    """Turns comparisons into labelled rows with one backend; pure given the backend."""

    def __init__(self, cfg: LabelConfig, constitution: Constitution):
        self.cfg, self.constitution = cfg, constitution
        shots = constitution.exemplars.choice_cot if cfg.cot else constitution.exemplars.choice
        self.shots = shots if cfg.few_shot is None else shots[:cfg.few_shot]
        self.priors: dict[str, list[float]] = {}

    def questions(self, pair: Comparison) -> list[tuple[str, str, Question]]:
        """(principle name, order, question) for each vote of a pair."""
        principles = self.constitution.choice
        k = min(self.cfg.principles, len(principles))
        out = []
        for i in draw_principles(len(principles), k, self.cfg.seed, pair.id):
            p = principles[i]
            out.append((p.name, "ab", Question(pair.conversation, p.text, pair.a, pair.b)))
            if self.cfg.debias:
                out.append((p.name, "ba", Question(pair.conversation, p.text, pair.b, pair.a)))
        return out

    def prompt(self, q: Question):
        return build_prompt(q, self.shots, self.cfg.prompt_format, self.cfg.cot,
                            self.cfg.system_prompt, self.cfg.layout)

    def label(self, backend, pairs: list[Comparison]) -> list[dict]:
        cfg = self.cfg
        votes = [(pi, *v) for pi, pair in enumerate(pairs) for v in self.questions(pair)]
        prompts = [self.prompt(q) for _, _, _, q in votes]
        reasoning: list[str | None] = [None] * len(votes)
        if cfg.cot:
            sampling = Sampling.from_config(cfg.cot_sampling)
            reasoning = [c[0].text.strip() for c in backend.generate(prompts, sampling)]
        options = [option_texts(cfg.prompt_format, r) for r in reasoning]
        logprobs = backend.score_choices(prompts, options)
        priors = self._priors(backend, {q.principle for *_, q in votes}) \
            if cfg.calibrate and not cfg.cot else {}
        rows: list[list[dict]] = [[] for _ in pairs]
        for (pi, name, order, q), lp, r in zip(votes, logprobs, reasoning):
            p_a = normalize(lp, priors.get(q.principle))
            if cfg.cot:
                p_a = clamp(p_a, cfg.cot_band)
            vote = {"principle": name, "order": order, "logprobs": [round(x, 5) for x in lp],
                    "p_first": round(p_a if order == "ab" else 1.0 - p_a, 6)}
            if r is not None:
                vote["reasoning"] = r
            rows[pi].append(vote)
        return [self._row(pair, vs) for pair, vs in zip(pairs, rows)]

    def _priors(self, backend, principle_texts: set[str]) -> dict[str, list[float]]:
        """The letters' log-probabilities on a content-free question, once per principle."""
        todo = sorted(t for t in principle_texts if t not in self.priors)
        if todo:
            qs = [Question((("user", CONTENT_FREE),), t, CONTENT_FREE, CONTENT_FREE)
                  for t in todo]
            lps = backend.score_choices([self.prompt(q) for q in qs],
                                        [option_texts(self.cfg.prompt_format)] * len(qs))
            self.priors.update(zip(todo, lps))
        return {t: self.priors[t] for t in principle_texts}

    def _row(self, pair: Comparison, votes: list[dict]) -> dict:
        label = soft_label(votes)
        row = {"id": pair.id, "conversation": [list(t) for t in pair.conversation],
               "response_a": pair.a, "response_b": pair.b, "label": round(label, 6),
               "disagree": orders_disagree(votes), "method": method_name(self.cfg),
               "votes": votes}
        if pair.better is not None:
            row["human_better"] = "a" if pair.better == 0 else "b"
        return row


def pair_seed_flip(pair_id: str, seed: int = 0) -> bool:
    """A fixed coin per pair (used to show the human-better answer first half the time)."""
    return hashlib.sha256(f"{seed}\x00{pair_id}".encode()).digest()[0] % 2 == 1
