"""SELF-ALIGN stage 2: principle-driven answers, parsed and filtered, and their statistics.

The prompt is the constitution's `self_align` section: the preamble, the numbered principles,
the exemplars (the user's request, the assistant's internal thoughts naming the principles,
the answer), then the new instruction and "Watson (internal thoughts):". The model writes its
thoughts and then "Watson: <answer>"; the two are parsed apart. A reply ends where the next
turn begins (a "User:" turn or a second "Watson" turn): the text after it is the model playing
on and is cut, as the paper's stop sequences cut it. An answer is dropped, with its reason
counted, when it is empty or missing, repeats text of an exemplar or a principle (the model
copied the prompt instead of answering), or hit the token cap before its turn ended.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from constitutional.constitution import SelfAlign

TURN_STOPS = ("\nUser:", "\n\nUser", "\n### User")
LEAK_NGRAM = 8            # words an answer may not share in a row with the prompt's text


def rules_text(sa: SelfAlign) -> str:
    return "\n".join(f"{i + 1} ({p.name}). {p.text}" for i, p in enumerate(sa.principles))


def principled_prompt(sa: SelfAlign, instruction: str) -> str:
    a = sa.assistant
    shots = "".join(f"User: {ex.user}\n\n{a} (internal thoughts): {ex.thoughts}\n\n"
                    f"{a}: {ex.answer}\n\n" for ex in sa.exemplars)
    return (f"{sa.preamble}\n\nRules:\n{rules_text(sa)}\n\n{shots}User: {instruction}\n\n"
            f"{a} (internal thoughts):")


def turn_stops(sa: SelfAlign) -> tuple[str, ...]:
    """Stop sequences for a principle-driven answer: a user turn, or the assistant's thoughts
    again (its first "<assistant>:" follows the thoughts, so that one cannot be a stop)."""
    return TURN_STOPS + (f"\n{sa.assistant} (internal thoughts)",)


def parse(sa: SelfAlign, completion: str) -> tuple[str, str | None, bool]:
    """(thoughts, answer or None, ran_on): the answer follows "\\n<assistant>:" and ends
    where a new turn begins (a user turn, or a second assistant turn inside the answer);
    `ran_on` says that something after it was cut."""
    text, ran_on = completion, False
    for stop in TURN_STOPS:
        i = text.find(stop)
        if i >= 0:
            text, ran_on = text[:i], True
    m = re.search(rf"\n\s*{re.escape(sa.assistant)}\s*:", text)
    if not m:
        return text.strip(), None, ran_on
    answer = text[m.end():]
    again = re.search(rf"\n\s*{re.escape(sa.assistant)}\s*(\(internal thoughts\))?\s*:",
                      answer)
    if again:
        answer, ran_on = answer[:again.start()], True
    return text[:m.start()].strip(), answer.strip(), ran_on


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def prompt_ngrams(sa: SelfAlign) -> set[tuple[str, ...]]:
    parts = [sa.preamble, *(p.text for p in sa.principles)]
    parts += [x for ex in sa.exemplars for x in (ex.user, ex.thoughts, ex.answer)]
    return set().union(*(_ngrams(t, LEAK_NGRAM) for t in parts))


def drop_reason(answer: str | None, ran_on: bool, finish_reason: str,
                leaks: set[tuple[str, ...]]) -> str | None:
    if answer is None:
        return "no_answer"
    if not answer.strip():
        return "empty"
    if _ngrams(answer, LEAK_NGRAM) & leaks:
        return "leaked_exemplar"
    if finish_reason == "length" and not ran_on:
        return "runaway"            # cut by the token cap mid-answer, not by its turn's end
    return None


def cited_principles(sa: SelfAlign, thoughts: str) -> list[str]:
    """Principles the thoughts invoke, by name or by rule number."""
    low = thoughts.lower()
    out = []
    for i, p in enumerate(sa.principles):
        if re.search(rf"\b{re.escape(p.name.lower())}\b", low) or \
                re.search(rf"\brules?\s+{i + 1}\b|\b{i + 1}\s*\({re.escape(p.name.lower())}",
                          low):
            out.append(p.name)
    return out


def principle_stats(rows: Sequence[dict]) -> dict:
    """How often each principle is invoked, per instruction source (the paper's statistics):
    answers per source, counts per (source, principle), principles by total count."""
    totals = Counter(r["source"] for r in rows)
    invoked = {src: Counter(p for r in rows if r["source"] == src for p in r["principles"])
               for src in sorted(totals)}
    overall = Counter(p for r in rows for p in r["principles"])
    return {"answers": dict(totals), "invoked": {s: dict(c) for s, c in invoked.items()},
            "order": [p for p, _ in overall.most_common()]}


def drop_counts(rows: Sequence[dict]) -> dict[str, int]:
    """Principle-driven answers kept, and dropped by reason."""
    return dict(Counter(r["drop"] or "kept" for r in rows))
