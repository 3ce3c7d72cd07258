"""The critique ablation: harmlessness (preference-model score) of revisions by round.

Stage 1 keeps every intermediate revision. Round 0 is the helpful model's first answer, round
k the k-th revision. The same prompts are also worked through in `revision_only` mode (the
revision request without a critique first, the paper's "is the critique necessary" question),
and the preference model of the run scores every answer. Per mode and round: the mean score
with a bootstrap 95% interval over chains.
"""

from __future__ import annotations

from typing import Callable, Sequence

from constitutional.evals.metrics import bootstrap_ci

ScoreFn = Callable[[Sequence[Sequence[dict]], Sequence[str]], list[float]]


def chain_answers(rows: Sequence[dict]) -> list[tuple[list[dict], int, str]]:
    """(prompt messages, round, text) for round 0 (the first answer) and every revision."""
    out = []
    for r in rows:
        out.append((r["messages"], 0, r["initial_response"]))
        for rd in r["rounds"]:
            out.append((r["messages"], rd["round"], rd["revision"]))
    return out


def curve(rows: Sequence[dict], score: ScoreFn) -> list[dict]:
    items = chain_answers(rows)
    scores = score([m for m, _, _ in items], [t for _, _, t in items])
    by_round: dict[int, list[float]] = {}
    for (_, k, _), s in zip(items, scores):
        by_round.setdefault(k, []).append(s)
    return [{"round": k, "n": len(v), "mean": sum(v) / len(v), "ci95": list(bootstrap_ci(v))}
            for k, v in sorted(by_round.items())]


def ablation(modes: dict[str, Sequence[dict]], score: ScoreFn) -> dict[str, list[dict]]:
    """{mode: curve} for each mode's chains (`critique`, `revision_only`)."""
    return {mode: curve(rows, score) for mode, rows in modes.items() if rows}
