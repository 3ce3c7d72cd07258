"""Bradley-Terry strengths from pairwise judgements, reported as Elo with bootstrap intervals.

Model: p(i beats j) = sigmoid(b_i - b_j). A judgement is (i, j, y) with y = p(i is better) in
[0, 1] (a soft label from the judge's option probabilities; 1/0 for a hard win). The strengths
maximize  sum_k  y_k log sigmoid(b_i - b_j) + (1 - y_k) log sigmoid(b_j - b_i), found by
Newton's method (the log-likelihood is concave; a tiny ridge term keeps it strictly so when a
model wins every comparison). Elo = 400 / ln(10) * b, so a 400-point gap means 10:1 odds,
shifted so the anchor model (the first one, usually the starting model) sits at 0.

Intervals: the percentile bootstrap over prompts (all judgements on one prompt are resampled
together, since they share the prompt's difficulty), refitting each time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

ELO_PER_NAT = 400.0 / math.log(10.0)


@dataclass(frozen=True)
class Judgement:
    i: int              # index of the first model
    j: int              # index of the second model
    y: float            # p(first model's answer is better), in [0, 1]
    group: str = ""     # what the bootstrap resamples together (the prompt)


def fit_bradley_terry(n_models: int, judgements: Sequence[Judgement], ridge: float = 1e-4,
                      iters: int = 100, tol: float = 1e-10):
    """Maximum-likelihood strengths b (natural-log odds scale), mean zero. numpy array [M]."""
    import numpy as np

    b = np.zeros(n_models)
    if not judgements:
        return b
    i = np.array([x.i for x in judgements])
    j = np.array([x.j for x in judgements])
    y = np.array([x.y for x in judgements], dtype=float)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(b[i] - b[j])))           # [K] p(i beats j) under b
        r = y - p                                           # [K] d loglik / d (b_i - b_j)
        w = p * (1.0 - p)                                   # [K] curvature
        grad = np.bincount(i, r, n_models) - np.bincount(j, r, n_models) - ridge * b
        hess = -ridge * np.eye(n_models)
        np.add.at(hess, (i, i), -w)
        np.add.at(hess, (j, j), -w)
        np.add.at(hess, (i, j), w)
        np.add.at(hess, (j, i), w)
        step = np.linalg.solve(hess, grad)
        b = b - step
        if np.max(np.abs(step)) < tol:
            break
    return b - b.mean()


def to_elo(b, anchor: int = 0) -> list[float]:
    return [float(ELO_PER_NAT * (x - b[anchor])) for x in b]


def win_matrix(n_models: int, judgements: Sequence[Judgement]) -> list[list[float | None]]:
    """W[i][j]: mean p(i beats j) over their judgements (None where they never met)."""
    tot = [[0.0] * n_models for _ in range(n_models)]
    cnt = [[0] * n_models for _ in range(n_models)]
    for x in judgements:
        tot[x.i][x.j] += x.y
        tot[x.j][x.i] += 1.0 - x.y
        cnt[x.i][x.j] += 1
        cnt[x.j][x.i] += 1
    return [[tot[a][c] / cnt[a][c] if cnt[a][c] else None for c in range(n_models)]
            for a in range(n_models)]


def elo_with_ci(n_models: int, judgements: Sequence[Judgement], anchor: int = 0,
                n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Elo per model, its bootstrap interval (over groups), and the win-rate matrix."""
    import numpy as np

    elo = to_elo(fit_bradley_terry(n_models, judgements), anchor)
    groups: dict[str, list[Judgement]] = {}
    for x in judgements:
        groups.setdefault(x.group, []).append(x)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if keys else 0):
        pick = rng.integers(0, len(keys), len(keys))
        sample = [x for k in pick for x in groups[keys[k]]]
        boots.append(to_elo(fit_bradley_terry(n_models, sample), anchor))
    if boots:
        arr = np.array(boots)
        lo = np.quantile(arr, (1 - level) / 2, axis=0)
        hi = np.quantile(arr, (1 + level) / 2, axis=0)
        ci = [[float(a), float(c)] for a, c in zip(lo, hi)]
    else:
        ci = [[float("nan")] * 2 for _ in range(n_models)]
    return {"elo": elo, "ci95": ci, "win_rate": win_matrix(n_models, judgements),
            "judgements": len(judgements), "groups": len(keys), "anchor": anchor}
