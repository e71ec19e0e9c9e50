"""A unit of work as the supervisor sees it."""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass(eq=False)
class Task:
    """One submitted call: its pickled form, its future and what the policies need to know.

    ``attempts`` counts how many times a worker died while running it, so that ``retries``
    can bound re-runs; tasks that were merely queued behind it on a dead worker don't count.
    """

    future: Future[Any]
    payload: bytes
    label: str
    timeout: float | None = None
    id: int = field(default_factory=lambda: next(_ids))
    attempts: int = 0
    # Set once the future is marked running; a re-queued task must not be marked twice.
    claimed: bool = False

    def __str__(self) -> str:
        return f"task {self.id} ({self.label})"
