"""The moving parts of a running pipeline, all guarded by one lock.

Why one lock: admission, the stage queues, the reorder buffer and drops must agree with each
other at every moment (a drop removes an item from a queue *and* from the count in flight *and*
marks its position as skipped); one lock makes that trivially consistent, and at frame rates
(hundreds of items per second) it is nowhere near contended. Each kind of waiter has its own
condition on that lock, so a change wakes only the threads it concerns.

Invariants:
- ``in_flight`` counts items admitted and not yet delivered (or dropped) and never exceeds
  ``capacity``: that, and nothing else, bounds the memory the pipeline holds.
- Every admitted item gets the next sequence number and ends in ``_done`` under it, either as
  itself (finished, possibly failed) or as ``None`` (dropped): the consumer delivers positions
  strictly in order and never waits for a position that will not come.
- A source item is handed to ``release`` exactly once: when the last stage is done with it,
  when it is dropped, or when the pipeline stops (after the task holding it, if any, ends).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from memwise.pipeline.snapshot import PipelineSnapshot, StageCounters
from memwise.pipeline.stage import Item, ItemError, Stage

Release = Callable[[Any], None]


def _no_release(_: Any) -> None:
    return None


class Flow:
    """Queues between stages, admission, reordering, drops and counters of one run."""

    def __init__(
        self, stages: list[Stage], capacity: int, drop: str | None, release: Release | None
    ) -> None:
        self.stages = stages
        self.capacity = capacity
        self.drop = drop
        self._release = release or _no_release
        lock = threading.Lock()
        self._lock = lock
        self._queues: list[deque[Item]] = [deque() for _ in stages]
        # Producers still feeding queue i: the source for the first, the previous stage's
        # workers for the others; index len(stages) is the reorder buffer.
        self._producers = [1] + [stage.workers for stage in stages]
        self._not_empty = [threading.Condition(lock) for _ in stages]
        self._not_full = [threading.Condition(lock) for _ in stages]
        self._room = threading.Condition(lock)
        self._ready = threading.Condition(lock)
        self._futures = threading.Condition(lock)
        self._done: dict[int, Item | None] = {}  # position -> finished item, None if dropped
        self.counters = [StageCounters() for _ in stages]
        self.in_flight = self.peak_in_flight = self.admitted = self.delivered = self.drops = 0
        self._next_out = 0
        self._source_holds = False  # the feeder reserved room it has no item for yet
        self.stopped = False

    # ---------------------------------------------------------------- the source's side

    def _has_room(self) -> bool:
        return self.in_flight < self.capacity and len(self._queues[0]) < self.stages[0].capacity

    def reserve(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s for room for one more item; False if none or stopped."""
        with self._lock:
            self._room.wait_for(lambda: self.stopped or self._has_room(), timeout)
            if self.stopped or not self._has_room():
                return False
            self.in_flight += 1
            return True

    def unreserve(self) -> None:
        """Give back a reservation the source had no item for."""
        with self._lock:
            self.in_flight -= 1
            self._room.notify()

    def enter(self, value: Any) -> None:
        """Admit ``value`` into a place :meth:`reserve` made (released instead after a stop)."""
        with self._lock:
            if not self.stopped:
                self._enter(Item(self.admitted, value))
                return
        self._release(value)

    def _enter(self, item: Item) -> None:
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.admitted += 1
        self._queues[0].append(item)
        self._not_empty[0].notify()

    def offer(self, value: Any) -> bool:
        """Admit ``value`` now, applying the drop policy if full; False if it was dropped."""
        victim: Any = None
        with self._lock:
            if self.stopped:
                admitted = False
                victim = value
            elif self._has_room():
                admitted = True
            elif self.drop == "oldest" and self._queues[0]:
                oldest = self._queues[0].popleft()
                self._done[oldest.seq] = None
                self.in_flight -= 1  # the newcomer takes its place
                self._count_drop()
                victim = oldest.source
                admitted = True
            else:
                self._count_drop()
                admitted = False
                victim = value
            if admitted:
                self.in_flight += 1
                self._enter(Item(self.admitted, value))
        if victim is not None:
            self._release(victim)
        return admitted

    def _count_drop(self) -> None:
        self.drops += 1
        self.counters[0].drops += 1

    def source_ready(self) -> bool:
        """The feeder may read the next item: room reserved (or a drop policy); False on stop."""
        if self.drop is not None:
            return not self.stopped
        self._source_holds = self.reserve(None)
        return self._source_holds

    def source_item(self, value: Any) -> None:
        if self.drop is None:
            self._source_holds = False
            self.enter(value)
        else:
            self.offer(value)

    def source_end(self, error: BaseException | None = None) -> None:
        """The source is exhausted, or raised ``error``: that takes the next position."""
        with self._lock:
            if error is not None and not self.stopped:
                item = Item(self.admitted, None)
                item.error = ItemError(item.seq, "source", error)
                if not self._source_holds:  # beyond capacity by one: it holds no data
                    self.in_flight += 1
                self._source_holds = False
                self._enter(item)
            elif self._source_holds:
                self._source_holds = False
                self.in_flight -= 1
                self._room.notify()
            self._producers[0] -= 1
            self._not_empty[0].notify_all()

    # ---------------------------------------------------------------- the stages' side

    def take(self, index: int) -> Item | None:
        """The next item for stage ``index``; None once its input has ended or on stop."""
        queue = self._queues[index]
        with self._lock:
            self._not_empty[index].wait_for(
                lambda: self.stopped or bool(queue) or not self._producers[index]
            )
            if self.stopped or not queue:
                return None
            item = queue.popleft()
            self._not_full[index].notify()
            if index == 0:
                self._room.notify()
            if item.error is None:
                self.counters[index].begin(item.seq)
            return item

    def give(self, index: int, item: Item, worked: bool) -> None:
        """Stage ``index`` is done with ``item``: pass it on (waiting for room) or finish it."""
        released = None
        with self._lock:
            if worked:
                self.counters[index].end(item.seq, item.error is not None)
            following = index + 1
            if following == len(self.stages):
                released = item.source
                item.source = None
                if self.stopped:
                    item.value = None
                else:
                    self._done[item.seq] = item
                    self._ready.notify()
            else:
                capacity = self.stages[following].capacity
                queue = self._queues[following]
                self._not_full[following].wait_for(lambda: self.stopped or len(queue) < capacity)
                if self.stopped:
                    released = item.source
                else:
                    queue.append(item)
                    self._not_empty[following].notify()
        if released is not None:
            self._release(released)

    def abandon(self, index: int, item: Item, future: Future[Any]) -> None:
        """On stop, ``item``'s task may still run: release its source when the task ends."""
        with self._lock:
            self.counters[index].running.pop(item.seq, None)
        source, item.source = item.source, None
        future.cancel()
        future.add_done_callback(lambda _: self._release(source))

    def worker_exit(self, index: int) -> None:
        with self._lock:
            self._producers[index + 1] -= 1
            if index + 1 == len(self.stages):
                self._ready.notify_all()
            else:
                self._not_empty[index + 1].notify_all()

    def await_future(self, future: Future[Any]) -> bool:
        """Wait for ``future`` without blocking stop; False if the pipeline stopped first."""
        future.add_done_callback(self._future_done)
        with self._lock:
            self._futures.wait_for(lambda: self.stopped or future.done())
            return future.done() and not future.cancelled()

    def _future_done(self, _: Future[Any]) -> None:
        with self._lock:
            self._futures.notify_all()

    # ---------------------------------------------------------------- the consumer's side

    def next_result(self) -> Item | None:
        """The item at the next position, waiting for it; None at the end or on stop."""
        with self._lock:
            while True:
                if self.stopped:
                    return None
                if self._next_out in self._done:
                    item = self._done.pop(self._next_out)
                    self._next_out += 1
                    if item is None:  # dropped: counted out of in_flight when it was
                        continue
                    self.in_flight -= 1
                    self.delivered += 1
                    self._room.notify()
                    return item
                if not self._producers[-1]:
                    return None
                self._ready.wait()

    # ---------------------------------------------------------------- stopping, observing

    def stop(self) -> None:
        """Stop every wait, and release every item not held by a stage at this moment."""
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            sources = [item.source for queue in self._queues for item in queue]
            for queue in self._queues:
                queue.clear()
            self._done.clear()
            for condition in (
                *self._not_empty,
                *self._not_full,
                self._room,
                self._ready,
                self._futures,
            ):
                condition.notify_all()
        for source in sources:
            self._release(source)

    def snapshot(self, name: str, state: str, elapsed: float) -> PipelineSnapshot:
        with self._lock:
            stages = tuple(
                counters.snapshot(stage.name, stage.kind, stage.workers, stage.capacity, len(queue))
                for stage, counters, queue in zip(
                    self.stages, self.counters, self._queues, strict=True
                )
            )
            return PipelineSnapshot(
                name=name,
                state=state,
                capacity=self.capacity,
                in_flight=self.in_flight,
                peak_in_flight=self.peak_in_flight,
                admitted=self.admitted,
                delivered=self.delivered,
                drops=self.drops,
                reorder=sum(1 for item in self._done.values() if item is not None),
                elapsed=elapsed,
                stages=stages,
            )


def run_worker(flow: Flow, index: int) -> None:
    """One worker of stage ``index``: take, work, pass on, until the input ends or stop."""
    stage = flow.stages[index]
    try:
        while True:
            item = flow.take(index)
            if item is None:
                return
            worked = item.error is None
            if worked:
                if stage.pool is None:
                    _call_here(stage, item)
                elif not _call_on_pool(flow, index, stage, item):
                    return
            flow.give(index, item, worked)
            del item  # not held while waiting for the next one: it may be delivered by then
    finally:
        flow.worker_exit(index)


def _fail(stage: Stage, item: Item, error: BaseException) -> None:
    item.error = ItemError(item.seq, stage.name, error)
    item.value = None


def _call_here(stage: Stage, item: Item) -> None:
    try:
        item.value = stage.fn(item.value)
    except BaseException as exc:  # sys.exit() in a stage too: the item fails, never vanishes
        _fail(stage, item, exc)


def _call_on_pool(flow: Flow, index: int, stage: Stage, item: Item) -> bool:
    """Run the stage's function on its pool; False if the pipeline stopped meanwhile."""
    assert stage.pool is not None
    try:
        future = stage.pool.submit(stage.fn, item.value)
    except Exception as exc:  # a broken or shut-down pool: this item fails, visibly
        _fail(stage, item, exc)
        return True
    if not flow.await_future(future) and not future.cancelled():
        flow.abandon(index, item, future)
        return False
    try:
        item.value = future.result()
    except (Exception, CancelledError) as exc:
        _fail(stage, item, exc)
    return True
