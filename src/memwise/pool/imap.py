"""Lazy, bounded consumption of an iterable through a pool.

The bound is on *outstanding* items (submitted and not yet handed to the consumer), not on
running ones. Tools that only bound the running items (mpire, pypeln) keep pulling input while
one slow item blocks the ordered output, and their reorder buffer grows without limit; here a
new item is submitted only after a result has been consumed, as PyTorch's DataLoader does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, TypeVar

T = TypeVar("T")


def bounded_results(
    submit: Callable[[Any], Future[T]], items: Iterator[Any], prefetch: int, ordered: bool
) -> Iterator[T]:
    """Yield results of ``submit(item)`` with at most ``prefetch`` items outstanding."""
    pending: deque[Future[T]] = deque()
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < prefetch:
            try:
                item = next(items)
            except StopIteration:
                exhausted = True
                return
            pending.append(submit(item))

    try:
        refill()
        while pending:
            # Not kept in a local across the yield: the future holds the result, and the
            # caller must be able to drop it while this generator waits.
            yield (pending.popleft() if ordered else _first_done(pending)).result()
            refill()
    finally:
        for future in pending:
            future.cancel()


def _first_done(pending: deque[Future[T]]) -> Future[T]:
    """Remove and return the earliest submitted of the completed futures."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for index, future in enumerate(pending):
        if future in done:
            del pending[index]
            return future
    raise AssertionError("wait() returned no completed future")
