"""What ``WorkerPool`` asks of the engine that runs its tasks somewhere else.

``WorkerPool`` keeps its public surface (``submit``, ``options``, ``map``, ``imap``, ``run``,
``shutdown``, ``snapshot``, ``subscribe``, ``resize``) and hands each call to a backend
through this small, explicit interface. The local pool's engine is its supervisor; a backend
such as Ray's (:mod:`memwise.ray`) implements the same methods on other machinery and never
sees the pool's internals, nor the pool theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from memwise.pool.events import PoolEvent
from memwise.pool.options import TaskOptions
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.subscribers import Subscription


class PoolBackend(Protocol):
    """The engine behind a ``WorkerPool``; every method may be called from any thread."""

    @property
    def workers(self) -> int:
        """The number of worker lanes now."""

    def submit(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` with per-task ``options`` (timeout already resolved
        against the pool's default) and return its future."""

    def close(self, cancel_futures: bool) -> None:
        """Accept no more tasks; cancel the queued ones if asked; let the rest finish."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker has been stopped and the backend's threads have ended;
        False if ``timeout`` passed first."""

    def terminate(self, error: BaseException) -> None:
        """End every worker now; fail every unfinished future with ``error``."""

    def snapshot(self) -> PoolSnapshot:
        """A consistent picture of the pool now."""

    def subscribe(self, callback: Callable[[PoolEvent], Any]) -> Subscription:
        """Deliver every later event to ``callback``, on a delivery thread of its own."""

    def unsubscribe(self, callback: Callable[[PoolEvent], Any]) -> None:
        """End every subscription of ``callback``."""

    def resize(self, workers: int) -> None:
        """Change the number of lanes; keys move only to or from added or removed lanes."""
