"""WorkerPool: a drop-in ``concurrent.futures.Executor`` whose workers are supervised."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from memwise import _wire
from memwise.errors import SerializationError
from memwise.pool.supervisor import PoolConfig, Supervisor
from memwise.pool.task import Task
from memwise.pool.worker import PartialChunk, run_chunk

T = TypeVar("T")

_UNSET: Any = object()
# Enough chunks per worker that uneven chunks even out, few enough that per-chunk overhead
# (one message each way) stays negligible against per-item work.
CHUNKS_PER_WORKER = 8

_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _shutdown_live_pools() -> None:
    for pool in list(_live_pools):
        pool.shutdown(wait=True)


try:
    # Runs before the interpreter joins non-daemon threads and before multiprocessing joins
    # its children at exit, as concurrent.futures does: otherwise a forgotten pool hangs exit.
    threading._register_atexit(_shutdown_live_pools)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - very old or exiting interpreter
    import atexit

    atexit.register(_shutdown_live_pools)


class WorkerPool(Executor):
    """A pool of supervised worker processes.

    Args:
        workers: number of worker processes (default: the number of usable CPUs).
        initializer: called with ``initargs`` once in every worker before its first task. A
            failure or a hang (past ``init_timeout`` seconds) raises ``WorkerInitError`` here,
            at construction, with the remote traceback.
        retries: how many times a task whose worker died is re-run on a fresh worker before
            its future fails with ``WorkerCrashed``.
        timeout: default per-task time limit in seconds; an overdue task's worker is killed
            and replaced, and its future fails with ``TaskTimeout``.
        start_method: ``"forkserver"`` (Linux default), ``"spawn"`` (elsewhere) or ``"fork"``.

    Functions and arguments travel by pickle (protocol 5), falling back to cloudpickle for
    lambdas and closures. ``submit`` reserves the keyword ``timeout``; a function that takes
    such a keyword itself can be wrapped with ``functools.partial``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        init_timeout: float = 60.0,
        retries: int = 0,
        timeout: float | None = None,
        start_method: str | None = None,
    ) -> None:
        if workers is None:
            workers = _usable_cpus()
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        init_payload = None
        if initializer is not None:
            init_payload = _wire.dumps((initializer, initargs), "the initializer")
        self._workers = workers
        self._timeout = timeout
        self._supervisor = Supervisor(
            PoolConfig(
                workers=workers,
                init_payload=init_payload,
                init_timeout=init_timeout,
                retries=retries,
                start_method=start_method,
            )
        )
        self._supervisor.start()
        _live_pools.add(self)
        weakref.finalize(self, self._supervisor.close, False)

    @property
    def workers(self) -> int:
        """The number of worker slots."""
        return self._workers

    def submit(  # type: ignore[override]
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        timeout: float | None = _UNSET,
        **kwargs: Any,
    ) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker and return its future.

        ``timeout`` overrides the pool's per-task time limit for this call. An argument that
        cannot be pickled fails the returned future with ``SerializationError``; the pool and
        other tasks are unaffected.
        """
        future: Future[T] = Future()
        try:
            payload = _wire.dumps((fn, args, kwargs), lambda: f"the call {_wire.describe(fn)}(...)")
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        self._supervisor.submit(
            Task(future, payload, fn, self._timeout if timeout is _UNSET else timeout)
        )
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """Like ``Executor.map``, with items sent in chunks.

        Without ``chunksize``, items are split into about ``8 * workers`` chunks, which keeps
        per-item overhead negligible for tiny functions and load balanced for slow ones. An
        item's exception is raised when iteration reaches that item.
        """
        star = len(iterables) != 1
        items = list(zip(*iterables, strict=False)) if star else list(iterables[0])
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (CHUNKS_PER_WORKER * self._workers)))
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [
            self.submit(run_chunk, fn, items[i : i + chunksize], star)
            for i in range(0, len(items), chunksize)
        ]
        return _chunk_results(futures, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; let queued ones finish unless ``cancel_futures``.

        With ``wait``, return once every worker process has exited.
        """
        self._supervisor.close(cancel_futures)
        if wait:
            self._supervisor.join()
        _live_pools.discard(self)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await pool.run(fn, *args)``: submit and wait without blocking the event loop.

        Cancelling the awaiting coroutine cancels the task if it has not started yet.
        """
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def stats(self) -> dict[str, Any]:
        """Totals since the pool started (submitted, done, failed, restarts, timeouts) and,
        under ``"slots"``, one row per worker slot: pid, state, running task, tasks done."""
        return {**self._supervisor.counts, "slots": self._supervisor.slots()}


def _chunk_results(futures: list[Future[Any]], deadline: float | None) -> Iterator[Any]:
    try:
        futures.reverse()
        while futures:
            remaining = None if deadline is None else deadline - time.monotonic()
            chunk: PartialChunk = futures[-1].result(remaining)
            futures.pop()
            yield from chunk.results
            if chunk.error is not None:
                raise _wire.load_exception(chunk.error)
    finally:
        for future in futures:
            future.cancel()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
