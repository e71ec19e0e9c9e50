"""Pipeline: ordered, bounded, multi-stage processing over threads or WorkerPool processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Literal

from memwise.pipeline._flow import Flow, Release, run_worker
from memwise.pipeline.snapshot import PipelineSnapshot
from memwise.pipeline.stage import Fused, Item, ItemError, Stage, Submits

__all__ = ["Pipeline"]

Drop = Literal["oldest", "newest"]
Errors = Literal["raise", "record"]
_PUSH = object()  # no source given: items come through put()


class Pipeline:
    """Items from a source through stages, out in source order, with bounded memory.

    >>> with Pipeline(frames, release=buffers.release) as line:      # doctest: +SKIP
    ...     line.pipe(denoise, workers=2).pipe(detect, pool=pool).pipe(verdict)
    ...     for verdict in line:
    ...         ...

    Args:
        source: an iterable or async iterable of items; None for a push source fed with
            :meth:`put` and ended with :meth:`finish`.
        capacity: the most items admitted and not yet delivered to the consumer (default: for
            every stage, its workers plus its capacity). A new item enters only when there is
            room, so the items alive in the pipeline never exceed it.
        drop: for live sources that must not wait: ``"newest"`` drops the incoming item when
            the pipeline is full, ``"oldest"`` drops the oldest item not yet started instead (or
            the incoming one if every item has started). Every drop is counted in
            :meth:`snapshot`. Default None: nothing is ever dropped; the source waits.
        errors: ``"raise"`` (default): an item whose stage raised raises that exception when
            iteration reaches its position, after stopping the pipeline. ``"record"``: yield an
            :class:`ItemError` in its place and go on.
        release: called with each source item once the last stage is done with it, or when
            it is dropped or the pipeline stops (``release=buffers.release`` for leased frames).
            Results must therefore not be the source item itself.
        name: shown in snapshots.

    Iterate it (``for`` or ``async for``) to start it and get results; or ``start()`` it and
    iterate later. ``stop()``, leaving a ``with`` block, or an error ends every thread it
    started and releases every item it holds.
    """

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any] | None = None,
        *,
        capacity: int | None = None,
        drop: Drop | None = None,
        errors: Errors = "raise",
        release: Release | None = None,
        name: str = "pipeline",
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if drop not in (None, "oldest", "newest"):
            raise ValueError(f'drop must be None, "oldest" or "newest", got {drop!r}')
        if errors not in ("raise", "record"):
            raise ValueError(f'errors must be "raise" or "record", got {errors!r}')
        self._source: Any = _PUSH if source is None else source
        self._capacity = capacity
        self._drop = drop
        self._errors = errors
        self._release = release
        self.name = name
        self._stages: list[Stage] = []
        self._flow: Flow | None = None
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._state = "new"
        self._finished_input = False
        self._pump: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- building

    def pipe(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int | None = None,
        pool: Submits | None = None,
        capacity: int | None = None,
        name: str | None = None,
        fuse: bool = False,
    ) -> Pipeline:
        """Add a stage running ``fn`` on each item; returns the pipeline, for chaining.

        Args:
            fn: called with the previous stage's result. On a pool it must be picklable (a
                module-level function, or anything cloudpickle handles).
            workers: items worked on at once (default: 1 thread; on a pool, its ``workers``).
            pool: a ``WorkerPool`` (or ``pool.options(...)``) to run ``fn`` in its processes;
                arrays in shared memory (``BufferPool(shared=True)`` frames, slot arrays)
                travel to them as handles, and a task whose worker crashed re-runs per the
                pool's ``retries``. Stages may share one pool. None: threads of this process.
            capacity: the most items waiting in front of this stage (default: ``workers``).
            name: the stage's name in snapshots and errors (default: ``fn.__name__``).
            fuse: run ``fn`` in the same task as the previous stage, which must run on a pool
                (this one's ``pool``, if given, must be the same): one task and one round
                trip through this process per item instead of two, and the previous result
                never leaves the worker. The two then show as one stage ("a+b") with the
                previous stage's workers and capacity; an error's note names the function
                that raised.
        """
        if self._flow is not None:
            raise ValueError(f"{self!r} already started: add every stage before iterating")
        stage_name = name or getattr(fn, "__name__", None) or f"stage{len(self._stages)}"
        if fuse:
            self._fuse(fn, stage_name, pool, workers, capacity)
            return self
        if workers is None:
            workers = 1 if pool is None else int(getattr(pool, "workers", 1))
        capacity = workers if capacity is None else capacity
        if workers < 1 or capacity < 1:
            raise ValueError(
                f"a stage needs workers >= 1 and capacity >= 1, got {workers} and {capacity}"
            )
        self._stages.append(Stage(fn, stage_name, workers, pool, capacity))
        return self

    def _fuse(
        self,
        fn: Callable[[Any], Any],
        name: str,
        pool: Submits | None,
        workers: int | None,
        capacity: int | None,
    ) -> None:
        previous = self._stages[-1] if self._stages else None
        if previous is None or previous.pool is None:
            raise ValueError(
                f"fuse=True runs {name!r} in the tasks of the previous stage, which must run "
                "on a pool: add the stage without fuse, or give the previous stage a pool"
            )
        if pool is not None and pool is not previous.pool:
            raise ValueError(
                f"fuse=True runs {name!r} on the previous stage's pool: leave pool out, or "
                "pass that same pool"
            )
        if workers is not None or capacity is not None:
            raise ValueError(
                f"a fused stage ({name!r}) uses the previous stage's workers and capacity: "
                "set them there"
            )
        fused = (
            previous.fn
            if isinstance(previous.fn, Fused)
            else Fused((previous.fn,), (previous.name,))
        )
        self._stages[-1] = dataclasses.replace(
            previous, fn=fused.then(fn, name), name=f"{previous.name}+{name}"
        )

    # ---------------------------------------------------------------- running

    def start(self) -> Pipeline:
        """Start the stages (and the source's feeder thread); iterating starts it too."""
        self._start(feed=True)
        return self

    def _start(self, *, feed: bool) -> Flow:
        if self._flow is not None:
            return self._flow
        if not self._stages:
            raise ValueError(f"{self!r} has no stage: add one with .pipe(fn)")
        capacity = self._capacity
        if capacity is None:
            capacity = sum(stage.workers + stage.capacity for stage in self._stages)
        flow = Flow(self._stages, capacity, self._drop, self._release)
        self._flow = flow
        self._started_at = time.monotonic()
        self._state = "running"
        for index, stage in enumerate(self._stages):
            for k in range(stage.workers):
                self._spawn(f"{stage.name}-{k}", run_worker, flow, index)
        if self._source is not _PUSH and feed:
            self._spawn("source", _feed, flow, self._source)
        return flow

    def _spawn(self, label: str, target: Callable[..., None], *args: Any) -> None:
        # Daemon: a stage function that never returns must not keep the interpreter alive.
        thread = threading.Thread(
            target=target, args=args, name=f"memwise-pipeline:{self.name}-{label}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Push ``item`` (push sources only); False if it could not enter.

        Without a drop policy, waits up to ``timeout`` s for room and returns False if none
        came (back-pressure: the caller decides what to do with the item). With a drop
        policy, never waits: see ``drop``. Also False once the pipeline is stopped.
        """
        if self._source is not _PUSH:
            raise ValueError(f"{self!r} reads its own source: put() is for Pipeline(None)")
        if self._finished_input:
            raise ValueError(f"put() after finish() on {self!r}")
        flow = self._start(feed=False)
        if self._drop is not None:
            return flow.offer(item)
        if not flow.reserve(timeout):
            return False
        flow.enter(item)
        return True

    def finish(self) -> None:
        """No more items will be pushed: iteration ends after the last one."""
        if self._source is not _PUSH:
            raise ValueError(f"{self!r} reads its own source: finish() is for Pipeline(None)")
        flow = self._start(feed=False)
        if not self._finished_input:
            self._finished_input = True
            flow.source_end()

    def __iter__(self) -> Iterator[Any]:
        self._start(feed=True)
        return self

    def __next__(self) -> Any:
        return self._deliver(self._start(feed=True).next_result())

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._flow is None and isinstance(self._source, AsyncIterable):
            # An async source is read in the loop that iterates, where it was made.
            flow = self._start(feed=False)
            self._pump = asyncio.get_running_loop().create_task(_pump(flow, self._source))
        else:
            self._start(feed=True)
        return self

    async def __anext__(self) -> Any:
        flow = self._start(feed=True)
        try:
            item = await asyncio.to_thread(flow.next_result)
        except asyncio.CancelledError:
            self.stop()
            raise
        try:
            return self._deliver(item)
        except StopIteration:
            raise StopAsyncIteration from None

    def _deliver(self, item: Item | None) -> Any:
        if item is None:
            self._end()
            raise StopIteration
        if item.error is None:
            return item.value
        if self._errors == "record":
            return item.error
        self.stop()
        raise _with_position(item.error)

    def _end(self) -> None:
        assert self._flow is not None
        if self._state == "running" and not self._flow.stopped:
            self._state = "finished"
        self._join(10.0)

    def stop(self, timeout: float = 10.0) -> None:
        """End the pipeline: every wait ends, every held item is released, threads exit.

        Waits up to ``timeout`` s for the threads; a thread inside a stage function that does
        not return by then is left to finish that call (it releases its item and exits).
        Tasks on a pool that have not started are cancelled; running ones release their item
        when they end. Pools are not shut down: they belong to whoever made them.
        """
        if self._flow is None:
            self._state = "stopped"
            return
        if self._state == "running":
            self._state = "stopped"
        self._flow.stop()
        if self._pump is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already closed
                self._pump.get_loop().call_soon_threadsafe(self._pump.cancel)
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    def snapshot(self) -> PipelineSnapshot:
        """Every stage's depth, rate, busy share, errors and drops, and the pipeline's totals."""
        flow = self._flow or Flow(self._stages or [], self._capacity or 0, None, None)
        elapsed = time.monotonic() - self._started_at if self._flow is not None else 0.0
        return flow.snapshot(self.name, self._state, elapsed)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        stages = " | ".join(stage.name for stage in self._stages) or "no stage"
        return f"Pipeline({self.name!r}: {stages})"


def _with_position(error: ItemError) -> BaseException:
    exc = error.error
    note = getattr(exc, "add_note", None)
    if note is not None:
        note(f"(item {error.index} of the pipeline, in stage {error.stage!r})")
    return exc


def _feed(flow: Flow, source: Iterable[Any] | AsyncIterable[Any]) -> None:
    """The feeder thread: admit the source's items one by one, as room appears.

    Room first, then the next item: a slow pipeline never makes the source produce more
    items than it can hold (without a drop policy).
    """
    if isinstance(source, AsyncIterable):
        asyncio.run(_pump(flow, source))
        return
    error = None
    try:
        iterator = iter(source)
        while flow.source_ready():
            try:
                value = next(iterator)
            except StopIteration:
                break
            flow.source_item(value)
            del value  # not held while waiting for room
    except Exception as exc:
        error = exc
    finally:
        flow.source_end(error)


async def _pump(flow: Flow, source: AsyncIterable[Any]) -> None:
    """:func:`_feed` for an async source, in the event loop that owns it."""
    error = None
    try:
        iterator = source.__aiter__()
        while await asyncio.to_thread(flow.source_ready):
            try:
                value = await iterator.__anext__()
            except StopAsyncIteration:
                break
            flow.source_item(value)
            del value  # not held while waiting for room
    except Exception as exc:
        error = exc
    finally:
        flow.source_end(error)
