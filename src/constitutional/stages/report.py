"""Stage `report`: report.md and a self-contained report.html from the run folder."""

from __future__ import annotations

import time

from constitutional.artifacts import StageResult
from constitutional.config import StrictModel
from constitutional.rundir import RunDir


class Section(StrictModel):
    """The report reads the run folder alone: no settings."""


FAKE = ()


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """report.md and report.html, the verdict first."""
    from constitutional.report import write_report

    t0 = time.time()
    _, page = write_report(run)
    return [StageResult("report", page, 1, time.time() - t0, skipped=False)]
