"""WorkerPool: a drop-in ``concurrent.futures.Executor`` whose workers are supervised."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import replace
from typing import Any, TypeVar

from memwise import _oob, _wire
from memwise.budget import MemoryBudget
from memwise.errors import BrokenPool, SerializationError, SharedMemoryError
from memwise.memory import parse_size
from memwise.pool.backend import PoolBackend
from memwise.pool.config import PoolConfig
from memwise.pool.events import PoolEvent
from memwise.pool.imap import bounded_results
from memwise.pool.options import INHERIT, Submitter, TaskOptions
from memwise.pool.policies import Recycle
from memwise.pool.queue import key_bytes
from memwise.pool.remote import remote_backend
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.subscribers import Subscription
from memwise.pool.supervisor import Supervisor
from memwise.pool.task import Task
from memwise.pool.worker import PartialChunk, run_chunk

T = TypeVar("T")

_DEFAULTS = TaskOptions()
# Enough chunks per worker that uneven chunks even out, few enough that per-chunk overhead
# (one message each way) stays negligible against per-item work.
CHUNKS_PER_WORKER = 8

_SHUTDOWN_TIMEOUT = (
    "the pool was shut down with timeout={timeout} s and this task had not finished by then; "
    "its worker was killed"
)

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
        workers: the number of worker lanes, i.e. the most processes at once (default: the
            number of usable CPUs). ``max_workers`` is a synonym.
        min_workers: processes kept alive even when idle (default: all of them). With fewer,
            workers start on demand and, with ``Recycle(idle=...)``, idle ones above the
            minimum exit: ``min_workers=0`` lets an idle service hold no worker at all.
        initializer: called with ``initargs`` once in every worker before its first task. A
            failure or a hang (past ``init_timeout`` seconds) raises ``WorkerInitError`` here,
            at construction, with the remote traceback.
        retries: how many times a task whose worker died is re-run on a fresh worker before
            its future fails with ``WorkerCrashed``.
        timeout: default per-task time limit in seconds; an overdue task's worker is killed
            and replaced, and its future fails with ``TaskTimeout``.
        recycle: when to replace workers by fresh processes (see :class:`Recycle`).
        max_restarts: break the pool (``BrokenPool``) once workers have died unexpectedly more
            than this many times in total; None for no limit.
        trim: return freed heap memory to the OS after every task (glibc ``malloc_trim``).
        budget: a :class:`MemoryBudget`; a task starts only when the measured memory (this
            process, the workers, shared slots) plus its ``options(memory=...)`` fits.
        shm_threshold: contiguous ndarray data (and other PEP 574 buffers) of at least this
            size cross processes through shared-memory slots instead of the pipe, in both
            directions: arrays arrive as read-only views of the slots, with no copy on receive.
            An array that already lives in a slot travels as a handle, with no copy at all.
        shm_fallback: when the shared-memory cap is reached, pickle through the pipe with a
            warning instead of waiting for a slot and then failing with
            ``SharedMemoryExhausted``.
        start_method: ``"forkserver"`` (Linux default), ``"spawn"`` (elsewhere) or ``"fork"``.
        backend: ``"local"`` (worker processes of this machine) or ``"ray"``: one Ray actor
            per worker lane, on the cluster at ``address`` (or ``RAY_ADDRESS``), else on a
            local cluster started on loopback. The same API and guarantees, except those
            listed in docs/ray.md (no ``budget``, ``min_workers``, shared-memory slots,
            ``Recycle(idle=, on_key_change=, hard_memory=)``).
        address: the Ray cluster to join (``backend="ray"`` only).

    Functions and arguments travel by pickle (protocol 5), falling back to cloudpickle for
    lambdas and closures. ``submit`` passes every keyword to the function; per-task options
    go through ``pool.options(timeout=, key=, priority=, coalesce=, memory=).submit(...)``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_workers: int | None = None,
        min_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        init_timeout: float = 60.0,
        retries: int = 0,
        timeout: float | None = None,
        recycle: Recycle | None = None,
        max_restarts: int | None = None,
        trim: bool = False,
        budget: MemoryBudget | None = None,
        shm_threshold: int | str = _oob.DEFAULT_THRESHOLD,
        shm_fallback: bool = False,
        start_method: str | None = None,
        backend: str = "local",
        address: str | None = None,
    ) -> None:
        if workers is not None and max_workers is not None and workers != max_workers:
            raise ValueError("give workers or max_workers, not both")
        if workers is None:
            workers = _usable_cpus() if max_workers is None else max_workers
        min_workers = workers if min_workers is None else min_workers
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not 0 <= min_workers <= workers:
            raise ValueError(f"min_workers must be between 0 and {workers}, got {min_workers}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self._timeout = timeout
        self._budget = budget
        self._remote: PoolBackend | None = None
        if backend != "local" or address is not None:
            self._remote = remote_backend(
                backend,
                address=address,
                workers=workers,
                min_workers=min_workers,
                initializer=initializer,
                initargs=initargs,
                init_timeout=init_timeout,
                retries=retries,
                recycle=recycle or Recycle(),
                max_restarts=max_restarts,
                trim=trim,
                budget=budget,
                start_method=start_method,
            )
            _live_pools.add(self)
            weakref.finalize(self, self._remote.close, False)
            return
        init_payload, start_initargs = None, None
        if initializer is not None:
            init_payload, start_initargs = _pickle_initializer(initializer, initargs)
        self._shm_threshold = parse_size(shm_threshold)
        self._shm_fallback = shm_fallback
        self._supervisor = Supervisor(
            PoolConfig(
                max_workers=workers,
                min_workers=min_workers,
                init_payload=init_payload,
                start_initargs=start_initargs,
                init_timeout=init_timeout,
                retries=retries,
                start_method=start_method,
                recycle=recycle or Recycle(),
                max_restarts=max_restarts,
                trim=trim,
                budget=budget,
                shm_threshold=self._shm_threshold,
            )
        )
        self._supervisor.start()
        _live_pools.add(self)
        weakref.finalize(self, self._supervisor.close, False)

    @property
    def workers(self) -> int:
        """The number of worker lanes (the most processes at once); see :meth:`resize`."""
        if self._remote is not None:
            return self._remote.workers
        return self._supervisor.lane_count

    def resize(self, workers: int) -> None:
        """Change the number of worker lanes while the pool runs.

        Growing starts workers in the new lanes (with the default ``min_workers``, which
        keeps every lane filled; otherwise on demand). Shrinking stops the workers of the
        lanes above ``workers`` once they have finished every task they hold or that is
        queued for them: nothing is lost or re-run. Keys are routed by rendezvous hashing,
        so about ``1/workers`` of them move to another lane, and a key never moves while
        one of its tasks is queued or running: its tasks keep their order across a resize.
        ``min_workers`` is lowered to ``workers`` if it was above; if it was equal to the
        old number of lanes (the default), it follows the new one.
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int of at least 1, got {workers!r}")
        if self._remote is not None:
            self._remote.resize(workers)
            return
        self._supervisor.resize(workers)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker and return its future.

        Every keyword reaches ``fn``; memwise's per-task options (timeout, key, priority,
        coalesce, memory) go through :meth:`options`. An argument that cannot be pickled fails
        the returned future with ``SerializationError``; the pool and other tasks are
        unaffected.
        """
        return self.submit_with(_DEFAULTS, fn, *args, **kwargs)

    def options(
        self,
        *,
        timeout: float | None = INHERIT,
        key: Hashable = INHERIT,
        priority: int = INHERIT,
        coalesce: Hashable = INHERIT,
        memory: int | str = INHERIT,
    ) -> Submitter:
        """This pool with per-task options bound: ``pool.options(key=k).submit(fn, x)``.

        See :class:`~memwise.pool.options.TaskOptions` for what each option does.
        """
        return Submitter(self, _DEFAULTS).options(
            timeout=timeout, key=key, priority=priority, coalesce=coalesce, memory=memory
        )

    def submit_with(
        self, options: TaskOptions, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        """``submit`` with a :class:`TaskOptions` object, for layers that carry options along."""
        if self._remote is not None:
            return self._submit_remote(options, fn, args, kwargs)
        task = self._task(options, fn, args, kwargs)
        if task.future.done():  # its arguments could not be pickled
            return task.future
        self._hand(task, self._supervisor.submit)
        return task.future

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker and return its result (or raise its error).

        The same as ``submit(fn, *args, **kwargs).result()``, with every guarantee of a task
        (crash isolation, retries, timeouts), at the lowest latency the pool offers: when a
        worker is idle, this thread sends it the call and waits for its reply itself, with
        no hop through the pool's own thread. Otherwise the call is queued like any task.
        """
        return self.call_with(_DEFAULTS, fn, *args, **kwargs)

    def call_with(
        self, options: TaskOptions, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        """``call`` with a :class:`TaskOptions` object, for layers that carry options along."""
        if self._remote is not None:
            return self._submit_remote(options, fn, args, kwargs).result()
        task = self._task(options, fn, args, kwargs)
        if not task.future.done():
            self._hand(task, self._supervisor.call)
        future: Future[T] = task.future
        return future.result()

    def _submit_remote(
        self, options: TaskOptions, fn: Callable[..., T], args: Any, kwargs: Any
    ) -> Future[T]:
        assert self._remote is not None
        if options.timeout is INHERIT:
            options = replace(options, timeout=self._timeout)
        return self._remote.submit(options, fn, args, kwargs)

    def _task(self, options: TaskOptions, fn: Callable[..., Any], args: Any, kwargs: Any) -> Task:
        """The task for ``fn(*args, **kwargs)``; its future fails at once if the call cannot
        be pickled (the pool and other tasks are unaffected)."""
        memory = options.memory
        if memory and self._budget is None:
            raise ValueError("options(memory=...) reserves memory in a budget: pass budget= too")
        if options.key is not None:
            key_bytes(options.key)  # a key that cannot route fails here, before anything else
        future: Future[Any] = Future()
        outgoing = _oob.Outgoing(self._shm_threshold, self._shm_fallback)
        task = Task(
            future,
            b"",
            fn,
            self._timeout if options.timeout is INHERIT else options.timeout,
            key=options.key,
            priority=options.priority,
            coalesce=options.coalesce,
            memory=memory,
        )
        try:
            task.payload = _wire.dumps(
                (fn, args, kwargs),
                lambda: f"the call {_wire.describe(fn)}(...)",
                calls=True,
                buffer_callback=outgoing,
            )
        except (SerializationError, SharedMemoryError) as exc:
            outgoing.release()
            future.set_exception(exc)
            return task
        if outgoing.holds:
            future.add_done_callback(lambda _: outgoing.release())
        if outgoing.handles:
            task.outgoing = outgoing
        return task

    def _hand(self, task: Task, to: Callable[[Task], None]) -> None:
        try:
            to(task)
        except BaseException:
            # Refused (closed or broken pool): nothing will ever read the arguments' slots.
            if task.outgoing is not None:
                task.outgoing.release()
            raise

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
        item's exception is raised when iteration reaches that item. For a progress bar, wrap
        the results: ``memwise.observe.progress.track(pool.map(...), pool, total=n)``.
        """
        star = len(iterables) != 1
        items = list(zip(*iterables, strict=False)) if star else list(iterables[0])
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (CHUNKS_PER_WORKER * self.workers)))
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [
            self.submit(run_chunk, fn, items[i : i + chunksize], star)
            for i in range(0, len(items), chunksize)
        ]
        return _chunk_results(futures, deadline)

    def imap(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        prefetch: int | None = None,
        key: Callable[[Any], Hashable] | None = None,
    ) -> Iterator[T]:
        """Apply ``fn`` to each item lazily, with at most ``prefetch`` items outstanding.

        Items are pulled from ``iterable`` only as results are consumed, so at most
        ``prefetch`` (default ``2 * workers``) items are running, queued or waiting to be
        consumed, even behind one slow item: memory stays bounded for endless inputs.
        ``ordered=False`` yields results as they complete. ``key(item)`` pins items to
        workers as ``options(key=)`` does. An item's exception is raised at its position, and
        the items not yet started are cancelled. For a progress bar, wrap the results:
        ``memwise.observe.progress.track(pool.imap(...), pool, total=n)``.
        """
        prefetch = 2 * self.workers if prefetch is None else prefetch
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")

        def submit(item: Any) -> Future[T]:
            if key is None:
                return self.submit(fn, item)
            return self.options(key=key(item)).submit(fn, item)

        return bounded_results(submit, iter(iterable), prefetch, ordered)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop accepting tasks; let queued ones finish unless ``cancel_futures``.

        With ``wait``, return once every worker process has exited. With ``timeout`` too,
        wait that many seconds at most: workers still busy then are killed, and the futures
        of their tasks (and of any still queued) fail with ``BrokenPool``.
        """
        if self._remote is not None:
            self._remote.close(cancel_futures)
            if not wait:
                return
            if timeout is not None and not self._remote.join(timeout):
                self._remote.terminate(BrokenPool(_SHUTDOWN_TIMEOUT.format(timeout=timeout)))
            self._remote.join()
            _live_pools.discard(self)
            return
        self._supervisor.close(cancel_futures)
        if not wait:
            return
        if timeout is not None and not self._supervisor.join(timeout):
            self._supervisor.terminate(BrokenPool(_SHUTDOWN_TIMEOUT.format(timeout=timeout)))
        self._supervisor.join()
        self._supervisor.close_events()
        _live_pools.discard(self)  # without wait, exit still waits for the workers to end

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await pool.run(fn, *args)``: submit and wait without blocking the event loop.

        Cancelling the awaiting coroutine cancels the task if it has not started yet.
        """
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def snapshot(self) -> PoolSnapshot:
        """What the pool is doing and has done, as one immutable, consistent picture.

        Taken under the pool's lock, so its figures agree with each other; per-process
        figures (private memory, PSS, CPU %) are measured at most every 250 ms whoever asks,
        so frequent callers cost little. See :class:`~memwise.pool.snapshot.PoolSnapshot`.
        """
        if self._remote is not None:
            return self._remote.snapshot()
        return self._supervisor.snapshot()

    def subscribe(self, callback: Callable[[PoolEvent], Any]) -> Subscription:
        """Call ``callback(event)`` for every :class:`~memwise.pool.events.PoolEvent` from now on.

        Callbacks run on a thread of their own, never the pool's: a slow callback delays only
        its own events (past a bounded buffer they are dropped and counted in the
        subscription's ``dropped``), and one that raises is logged and unsubscribed. Close
        the returned subscription (or call :meth:`unsubscribe`) to stop;
        ``shutdown(wait=True)`` returns once every subscriber has had its last event.
        """
        if self._remote is not None:
            return self._remote.subscribe(callback)
        return self._supervisor.subscribe(callback)

    def unsubscribe(self, callback: Callable[[PoolEvent], Any]) -> None:
        """Stop calling ``callback`` (every subscription of it); events it holds still arrive."""
        if self._remote is not None:
            self._remote.unsubscribe(callback)
            return
        self._supervisor.unsubscribe(callback)


def _chunk_results(futures: list[Future[Any]], deadline: float | None) -> Iterator[Any]:
    try:
        futures.reverse()
        while futures:
            remaining = None if deadline is None else deadline - time.monotonic()
            chunk: PartialChunk = futures[-1].result(remaining)
            futures.pop()
            # Hand each result over without keeping it: once the caller drops an item, nothing
            # here may hold it (48 MB results times the chunk size otherwise).
            results, error = chunk.results, chunk.error
            del chunk
            results.reverse()
            while results:
                yield results.pop()
            if error is not None:
                raise _wire.load_exception(error)
    finally:
        for future in futures:
            future.cancel()


def _pickle_initializer(
    initializer: Callable[..., Any], initargs: tuple[Any, ...]
) -> tuple[bytes, tuple[Any, ...] | None]:
    """The initializer for the READY handshake, and the initargs to hand over at start, if any.

    Usually both travel in the handshake (by value if need be, like any call). Multiprocessing
    queues, locks, events and the like refuse that ("should only be shared between processes
    through inheritance"): those initargs go to each worker as multiprocessing starts it,
    which is how ProcessPoolExecutor passes them.
    """
    try:
        return _wire.dumps((initializer, initargs), "the initializer", calls=True), None
    except SerializationError:
        return _wire.dumps((initializer, ()), "the initializer", calls=True), tuple(initargs)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
