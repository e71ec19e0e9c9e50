"""A progress bar (rich) over a pool's results as they are consumed.

The caller wraps the results, so the pool never depends on this layer::

    for result in track(pool.imap(fn, items), pool, total=len(items)):
        ...

Restarts are read through ``pool.snapshot()``, the same for a local and a Ray-backed pool.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

T = TypeVar("T")

# A snapshot is taken under the pool's lock: read restarts no more often than the bar redraws
# (rich refreshes 10 times a second), not once per item.
_RESTARTS_EVERY = 0.1


def track(results: Iterable[T], pool: WorkerPool, total: int | None = None) -> Iterator[T]:
    """Yield ``results`` while showing items done, rate, ETA and ``pool``'s worker restarts.

    ``total`` is the number of items expected (``len(results)`` if it has one); without it
    the bar shows counts and rate but no ETA.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    if total is None and isinstance(results, Sized):
        total = len(results)
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
        restarts, read_at = 0, float("-inf")
        for result in results:
            now = time.monotonic()
            if now - read_at >= _RESTARTS_EVERY:
                restarts, read_at = pool.snapshot().restarts, now
            speed = progress.tasks[0].speed
            progress.update(
                bar,
                advance=1,
                restarts=restarts,
                rate=f"{speed:,.0f} items/s" if speed else "",
            )
            yield result
