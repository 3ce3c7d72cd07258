"""Preference-model training data: AI labels, helpfulness comparisons, and PMP pairs.

Every example is TRL's conversational preference shape plus the soft label:
`{"prompt": [messages], "chosen": [assistant], "rejected": [assistant], "margin": p}` where p
is the probability that `chosen` is the better answer. (TRL's preference collator carries one
float per pair under `margin`; our trainer reads it as p, see train/pm.py.) Answers are
oriented so that p >= 0.5, which makes "reward(chosen) > reward(rejected)" the accuracy.

PMP (preference-model pretraining) data, one question per row (JSONL or any dataset source):

    {"question": "...", "answers": [{"text": "...", "votes": 12, "accepted": true}, ...]}

Each answer scores round(log2(1 + min(votes, 100))) + (1 if accepted), or -1 when votes < 0;
every two answers to one question with different scores make a hard pair (p = 1).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

from constitutional.comparisons import (comparison, load_comparisons, preference_example,
                                        revision_pair)
from constitutional.datasource import read_rows
from constitutional.errors import InputError
from constitutional.jsonio import seeded_fraction

VOTE_CAP = 100


def ai_label_examples(path: str | Path, min_confidence: float = 0.0) -> list[dict]:
    """AI-labelled pairs: rows of the label stage, or `cai export`'s labelled preference
    dataset (any comparison shape with `label`, p(chosen better)); pairs whose
    |p - 0.5| < min_confidence are left out."""
    out = []
    for line, row in read_rows(path):
        if "response_a" in row:
            for key in ("conversation", "response_a", "response_b", "label"):
                if key not in row:
                    raise InputError("not a labels row (run `cai label`)", path=str(path),
                                     line=line, field=key)
            conv, a, b = row["conversation"], row["response_a"], row["response_b"]
        else:
            c = comparison(row, str(path), line)
            conv, a, b = c.conversation, c.a, c.b
        p = row.get("label")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise InputError("expected the AI label, a probability in [0, 1]", path=str(path),
                             line=line, field="label")
        if abs(p - 0.5) < min_confidence:
            continue
        out.append(preference_example(conv, a, b, p, "ai",
                                      str(row.get("id", f"line{line}"))))
    return out


def revision_pair_examples(path: str | Path) -> list[dict]:
    """Pairs by construction from a critique stage (`revision_pair`). Flagged revisions, and
    revisions equal to the original, are left out, as in SFT."""
    out = []
    for line, row in read_rows(path):
        for key in ("messages", "initial_response", "revision", "ok"):
            if key not in row:
                raise InputError("not a critique output row (run `cai critique`)",
                                 path=str(path), line=line, field=key)
        if row["ok"] and row["revision"].strip() != row["initial_response"].strip():
            out.append(revision_pair(row))
    return out


def over_refusal_examples(helpful_path: str | Path, refusals_path: str | Path) -> list[dict]:
    """Over-refusal pairs: on a benign prompt the policy's own answer (the helpful stage's) is
    chosen over the feedback model's deliberate refusal of the same prompt and sample (the
    refusals stage's), a hard label (p = 1). Pairs by construction from red-team prompts only
    teach declining; these teach that a benign request is not declined. A pair is kept only
    when the refusal does refuse or object and the answer does neither (the lexical reading
    of evals/evasiveness.py)."""
    from constitutional.evals.evasiveness import lexical_flags

    answers = {}
    for line, row in read_rows(helpful_path):
        answers[_answer_key(row, helpful_path, line)] = row
    out = []
    for line, row in read_rows(refusals_path):
        answer = answers.get(_answer_key(row, refusals_path, line))
        refusal = row["completion"].strip().strip('"').strip()
        if answer is None or not answer["completion"].strip():
            continue
        if lexical_flags(refusal)["refuses_or_objects"] and \
                not lexical_flags(answer["completion"])["refuses_or_objects"]:
            conversation = [(m["role"], m["content"]) for m in answer["messages"]]
            out.append(preference_example(conversation, answer["completion"], refusal, 1.0,
                                          "over_refusal", f"{row['id']}#{row['sample']}"))
    return out


def _answer_key(row: dict, path: str | Path, line: int) -> tuple[str, int]:
    for key in ("id", "sample", "completion", "messages"):
        if key not in row:
            raise InputError("not a generate output row (run the sl-cai stage with "
                             "helpful.refusals)", path=str(path), line=line, field=key)
    return str(row["id"]), int(row["sample"])


def human_examples(path: str | Path) -> list[dict]:
    """Human-labelled comparisons (HHH or HH format): hard labels, p = 1."""
    pairs, _ = load_comparisons(path)
    return [preference_example(c.conversation, c.a, c.b, 1.0 if c.better == 0 else 0.0,
                               "human", c.id)
            for c in pairs if c.better is not None]


def pmp_score(votes: int, accepted: bool) -> int:
    """The CAI paper's PMP score of an answer from its vote count."""
    if votes < 0:
        return -1
    return round(math.log2(1 + min(votes, VOTE_CAP))) + (1 if accepted else 0)


def pmp_examples(path: str | Path, max_pairs_per_question: int | None = None,
                 seed: int = 0) -> list[dict]:
    out = []
    for line, row in read_rows(path):
        q, answers = row.get("question"), row.get("answers")
        if not isinstance(q, str) or not q.strip():
            raise InputError("missing or empty", path=str(path), line=line, field="question")
        if not isinstance(answers, list):
            raise InputError("expected a list of {text, votes, accepted}", path=str(path),
                             line=line, field="answers")
        scored = []
        for i, a in enumerate(answers):
            if not isinstance(a, dict) or not isinstance(a.get("text"), str) or \
                    not isinstance(a.get("votes"), int):
                raise InputError("expected {text: str, votes: int, accepted: bool}",
                                 path=str(path), line=line, field=f"answers[{i}]")
            scored.append((pmp_score(a["votes"], bool(a.get("accepted"))), a["text"]))
        pairs = [(x, y) for x, y in itertools.combinations(scored, 2) if x[0] != y[0]]
        if max_pairs_per_question is not None and len(pairs) > max_pairs_per_question:
            pairs = random.Random(f"{seed}\x00{line}").sample(pairs, max_pairs_per_question)
        for k, (x, y) in enumerate(pairs):
            good, bad = (x, y) if x[0] > y[0] else (y, x)
            out.append(preference_example([("user", q)], good[1], bad[1], 1.0, "pmp",
                                          f"line{line}#{k}"))
    if not out:
        raise InputError("no answer pairs with different scores", path=str(path))
    return out


def mix(ai: list[dict], helpful: list[dict], helpful_per_label: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    want = min(len(helpful), round(len(ai) * helpful_per_label))
    rows = ai + (rng.sample(helpful, want) if want < len(helpful) else list(helpful))
    rng.shuffle(rows)
    return rows


def held_out(row: dict, fraction: float, seed: int) -> bool:
    """A fixed split by the row's id, so a resumed or repeated run holds out the same rows."""
    return seeded_fraction(seed, row["source"], row["source_id"]) < fraction
