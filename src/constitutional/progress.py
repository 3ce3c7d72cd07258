"""A rich progress bar with rate and ETA for every loop over data."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s",
                    style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int, unit: str = "rows") -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; the bar shows count, rate and time left."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), console=console, transient=False)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
