"""Progress bars for results as they are consumed (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(results: Iterator[T], total: int | None, restarts: Callable[[], int]) -> Iterator[T]:
    """Yield ``results`` while showing items done, rate, ETA and worker restarts."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]memwise"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("restarts: {task.fields[restarts]}"),
    )
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("items", total=total, rate="", restarts=0)
        for result in results:
            task = progress.tasks[0]
            speed = task.speed
            progress.update(
                bar,
                advance=1,
                restarts=restarts(),
                rate=f"{speed:,.0f} items/s" if speed else "",
            )
            yield result
