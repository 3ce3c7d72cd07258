"""Small statistics shared by the evaluations: accuracy, bootstrap intervals, calibration."""

from __future__ import annotations

import random
from typing import Sequence


def pick_score(p_better: float) -> float:
    """1 if the human-preferred answer got p > 0.5, 0 if < 0.5, 0.5 for an exact tie."""
    return 1.0 if p_better > 0.5 else 0.0 if p_better < 0.5 else 0.5


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling rows with replacement)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return lo, hi


def expected_calibration_error(p_better: Sequence[float], bins: int = 10) -> float:
    """ECE of the feedback model's confidence in the answer it picks.

    Confidence c = max(p, 1 - p) in [0.5, 1], cut into `bins` equal bins; ECE is the mean over
    rows of |accuracy of the bin - mean confidence of the bin|, weighted by bin size."""
    if not p_better:
        return float("nan")
    groups: dict[int, list[tuple[float, float]]] = {}
    for p in p_better:
        c = max(p, 1.0 - p)
        b = min(bins - 1, int((c - 0.5) * 2 * bins))
        groups.setdefault(b, []).append((c, pick_score(p)))
    total = 0.0
    for items in groups.values():
        conf = sum(c for c, _ in items) / len(items)
        acc = sum(a for _, a in items) / len(items)
        total += abs(acc - conf) * len(items)
    return total / len(p_better)
