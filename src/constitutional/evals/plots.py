"""The report's figures as PNG bytes (matplotlib, headless): the frontier and the ablation."""

from __future__ import annotations

import io
from typing import Sequence

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _figure(width: float = 6.4, height: float = 4.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def frontier_png(points: Sequence[dict], lines: Sequence[str]) -> bytes:
    """Helpfulness Elo against harmlessness Elo: one point per model, one line per method.

    A point is {"label", "harmlessness", "helpfulness", "harmlessness_ci", "helpfulness_ci",
    "lines"}; a line joins, in order, the points that list it."""
    plt, fig, ax = _figure()
    for k, line in enumerate(lines):
        pts = [p for p in points if line in p["lines"]]
        color = COLORS[k % len(COLORS)]
        ax.plot([p["harmlessness"] for p in pts], [p["helpfulness"] for p in pts], "-",
                color=color, label=line, alpha=0.8)
    for p in points:
        xlo, xhi = p["harmlessness_ci"]
        ylo, yhi = p["helpfulness_ci"]
        ax.errorbar(p["harmlessness"], p["helpfulness"],
                    xerr=[[p["harmlessness"] - xlo], [xhi - p["harmlessness"]]],
                    yerr=[[p["helpfulness"] - ylo], [yhi - p["helpfulness"]]],
                    fmt="o", color="black", ecolor="gray", elinewidth=0.8, capsize=2,
                    markersize=4)
        ax.annotate(p["label"], (p["harmlessness"], p["helpfulness"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("Harmlessness Elo")
    ax.set_ylabel("Helpfulness Elo")
    ax.set_title("Helpfulness vs harmlessness (95% bootstrap intervals)")
    if lines:
        ax.legend(fontsize=8)
    return _png(plt, fig)


def ablation_png(curves: dict[str, Sequence[dict]]) -> bytes:
    """Mean preference-model score by revision round, one line per mode."""
    plt, fig, ax = _figure(6.0, 4.2)
    names = {"critique": "critique -> revision", "revision_only": "revision only"}
    for k, (mode, pts) in enumerate(curves.items()):
        x = [p["round"] for p in pts]
        y = [p["mean"] for p in pts]
        lo = [p["ci95"][0] for p in pts]
        hi = [p["ci95"][1] for p in pts]
        color = COLORS[k % len(COLORS)]
        ax.plot(x, y, "o-", color=color, label=names.get(mode, mode))
        ax.fill_between(x, lo, hi, color=color, alpha=0.15)
    ax.set_xlabel("Revision round (0 = first answer)")
    ax.set_ylabel("Harmlessness PM score")
    ax.set_title("Preference-model score of revisions")
    ax.set_xticks(sorted({p["round"] for pts in curves.values() for p in pts}))
    ax.legend(fontsize=8)
    return _png(plt, fig)
