"""Delivery of :class:`~memwise.pool.events.PoolEvent` to ``pool.subscribe(callback)``.

Events are produced where things happen (mostly on the supervisor thread) and only appended
to each subscription's bounded buffer there; every subscription has its own delivery thread
that calls its callback. So a callback can never block or break the pool, and a slow one
delays only itself: when its buffer is full, new events for it are counted in ``dropped``
instead of growing memory. A callback that raises is logged and unsubscribed.

With no subscriber, producing an event is one truth test of ``EventHub.subscriptions`` at
the call site: callers check it before building the event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memwise.errors import ClosedError
from memwise.pool.events import EventKind, PoolEvent

if TYPE_CHECKING:
    from memwise.pool.handle import Worker
    from memwise.pool.task import Task

logger = logging.getLogger(__name__)

BUFFER_EVENTS = 10_000  # per subscription; beyond it, events are dropped and counted

Callback = Callable[[PoolEvent], Any]


class Subscription:
    """One callback's registration; ``close()`` (or ``with``) ends it.

    ``dropped`` counts events not delivered because the callback fell ``BUFFER_EVENTS``
    behind. Events already buffered when it closes are still delivered.
    """

    def __init__(self, hub: EventHub, callback: Callback, capacity: int) -> None:
        self.callback = callback
        self.dropped = 0
        self._hub = hub
        self._capacity = capacity
        self._buffer: deque[PoolEvent] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        name = getattr(callback, "__qualname__", type(callback).__name__)
        self._thread = threading.Thread(
            target=self._deliver, name=f"memwise-events-{name}", daemon=True
        )
        self._thread.start()

    def put(self, event: PoolEvent) -> None:
        """Buffer ``event`` for delivery (any thread; never blocks for long)."""
        with self._ready:
            if self._closed:
                return
            if len(self._buffer) >= self._capacity:
                self.dropped += 1
                return
            self._buffer.append(event)
            self._ready.notify()

    def close(self) -> None:
        """Unsubscribe: no new events; those buffered are still delivered, then the thread ends."""
        self._hub.remove(self)
        with self._ready:
            self._closed = True
            self._ready.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the delivery thread has ended (after ``close``)."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _deliver(self) -> None:
        while True:
            with self._ready:
                while not self._buffer and not self._closed:
                    self._ready.wait()
                if not self._buffer:
                    return
                event = self._buffer.popleft()
            try:
                self.callback(event)
            except Exception:
                logger.exception(
                    "a pool event callback (%r) raised on a %s event; it is unsubscribed",
                    self.callback,
                    event.kind,
                )
                self.close()
                with self._ready:
                    self._buffer.clear()
                return


class EventHub:
    """The subscriptions of one pool."""

    def __init__(self, capacity: int = BUFFER_EVENTS) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._closed = False
        self._closing: tuple[Subscription, ...] = ()
        # Replaced, never mutated, so producers read it without the lock.
        self.subscriptions: tuple[Subscription, ...] = ()

    def subscribe(self, callback: Callback) -> Subscription:
        """A new subscription; raises ``ClosedError`` once the hub is closed (its delivery
        thread would otherwise wait for events that never come)."""
        with self._lock:
            if self._closed:
                raise ClosedError("the pool is shut down; it sends no more events")
            subscription = Subscription(self, callback, self._capacity)
            self.subscriptions = (*self.subscriptions, subscription)
        return subscription

    def unsubscribe(self, callback: Callback) -> None:
        """End every subscription of ``callback`` (compared with ``==``, so bound methods match)."""
        for subscription in self.subscriptions:
            if subscription.callback == callback:
                subscription.close()

    def remove(self, subscription: Subscription) -> None:
        with self._lock:
            self.subscriptions = tuple(s for s in self.subscriptions if s is not subscription)

    def emit(self, event: PoolEvent) -> None:
        for subscription in self.subscriptions:
            subscription.put(event)

    def announce(self, kind: EventKind, **fields: Any) -> None:
        """Deliver an event to the subscribers, if there are any (any thread)."""
        if self.subscriptions:
            self.emit(PoolEvent(kind, time.time(), **fields))

    def announce_task(
        self, kind: EventKind, task: Task, worker: Worker | None = None, **fields: Any
    ) -> None:
        """An event about ``task`` (on ``worker``); callers on hot paths check for subscribers."""
        if not self.subscriptions:
            return
        if worker is not None:
            fields.update(lane=worker.lane, pid=worker.pid)
        self.emit(PoolEvent(kind, time.time(), task_id=task.id, function=task.label, **fields))

    def close(self, wait: bool) -> None:
        """End every subscription (after delivering what they hold); ``wait`` for that."""
        with self._lock:
            self._closed = True
            # Kept past their removal: a second close(wait=True) (the pool's shutdown, after
            # its supervisor's close(wait=False)) still waits for their last events.
            self._closing = (*self._closing, *self.subscriptions)
            subscriptions = self._closing
        for subscription in subscriptions:
            subscription.close()
        if wait:
            for subscription in subscriptions:
                subscription.join()
