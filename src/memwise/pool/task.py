"""A unit of work as the supervisor sees it."""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from typing import Any

from memwise import _wire

_ids = itertools.count(1)


class Task:
    """One submitted call: its pickled form, its future and what the policies need to know.

    ``attempts`` counts how many times a worker died while running it, so that ``retries``
    can bound re-runs; tasks that were merely queued behind it on a dead worker don't count.
    ``claimed`` is set once the future is marked running, which may happen only once even if
    the task is re-queued.
    """

    __slots__ = ("attempts", "claimed", "fn", "future", "id", "payload", "timeout")

    def __init__(
        self, future: Future[Any], payload: bytes, fn: Any, timeout: float | None = None
    ) -> None:
        self.future = future
        self.payload = payload
        self.fn = fn
        self.timeout = timeout
        self.id = next(_ids)
        self.attempts = 0
        self.claimed = False

    def __str__(self) -> str:
        return f"task {self.id} ({_wire.describe(self.fn)})"
