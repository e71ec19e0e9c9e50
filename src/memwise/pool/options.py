"""Per-task options, kept apart from the function's own keywords.

``WorkerPool.submit(fn, *args, **kwargs)`` passes every keyword to ``fn``, as an Executor
must. memwise's own per-task options travel on a separate, explicit path::

    pool.options(key=audio_file, priority=10).submit(recognize, segment)
    pool.options(timeout=5).submit(fetch, url, timeout=2)   # 2 goes to fetch

``options()`` returns a light :class:`Submitter` bound to the pool; it can be kept and reused,
and ``.options(...)`` on it refines a copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from memwise.memory import parse_size

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

T = TypeVar("T")


class _Inherit:
    """The pool's default timeout (distinct from ``None``, which means no limit)."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT: Any = _Inherit()


@dataclass(frozen=True)
class TaskOptions:
    """How one task is scheduled.

    Attributes:
        timeout: seconds before the task's worker is killed and its future fails with
            ``TaskTimeout``; ``None`` for no limit; by default the pool's ``timeout``.
        key: pins the task to one worker lane (rendezvous hashing of a stable digest of the
            key): tasks with equal keys run on the same worker, in submission order.
        priority: higher runs first among queued tasks (never reordering one key's tasks).
        coalesce: a tag; queued, not-yet-started tasks with the same tag are cancelled
            (latest wins, as for interactive previews).
        memory: bytes to reserve in the pool's budget while the task runs.
    """

    timeout: float | None = INHERIT
    key: Hashable = None
    priority: int = 0
    coalesce: Hashable = None
    memory: int = 0


def task_options(
    base: TaskOptions,
    *,
    timeout: float | None = INHERIT,
    key: Hashable = INHERIT,
    priority: int = INHERIT,
    coalesce: Hashable = INHERIT,
    memory: int | str = INHERIT,
) -> TaskOptions:
    """``base`` with the given fields replaced (``memory`` may be ``"600 MiB"``)."""
    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("timeout", timeout),
            ("key", key),
            ("priority", priority),
            ("coalesce", coalesce),
        )
        if value is not INHERIT
    }
    if memory is not INHERIT:
        given["memory"] = parse_size(memory)
    if "timeout" in given and given["timeout"] is not None and given["timeout"] <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {given['timeout']}")
    return replace(base, **given)


class Submitter:
    """A pool with per-task options bound; returned by ``WorkerPool.options()``."""

    __slots__ = ("_options", "_pool")

    def __init__(self, pool: WorkerPool, options: TaskOptions) -> None:
        self._pool = pool
        self._options = options

    @property
    def task_options(self) -> TaskOptions:
        """The options every task submitted through this object gets."""
        return self._options

    def options(
        self,
        *,
        timeout: float | None = INHERIT,
        key: Hashable = INHERIT,
        priority: int = INHERIT,
        coalesce: Hashable = INHERIT,
        memory: int | str = INHERIT,
    ) -> Submitter:
        """A copy with these options changed."""
        options = task_options(
            self._options,
            timeout=timeout,
            key=key,
            priority=priority,
            coalesce=coalesce,
            memory=memory,
        )
        return Submitter(self._pool, options)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """``pool.submit(fn, *args, **kwargs)`` with this object's options."""
        return self._pool.submit_with(self._options, fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``pool.call(fn, *args, **kwargs)`` with this object's options."""
        return self._pool.call_with(self._options, fn, *args, **kwargs)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await pool.run(...)`` with this object's options."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))
