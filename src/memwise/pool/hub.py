"""``EventHub``: hands pool events to subscribers on a delivery thread of its own.

The thread that produces events owns the pool's state and must never wait for an observer:
``emit`` only appends to a queue (and costs nothing without subscribers). A callback that is
slow delays only later callbacks; one that raises is logged and dropped for that event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue

from memwise.pool.events import PoolEvent

log = logging.getLogger("memwise")

Callback = Callable[[PoolEvent], None]


class EventHub:
    """Subscribers of one pool; see the module docstring."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._subscribers: tuple[Callback, ...] = ()
        self._queue: SimpleQueue[PoolEvent | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Deliver every later event to ``callback``; returns the function that unsubscribes."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._deliver, name=self._name, daemon=True)
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def emit(self, event: PoolEvent) -> None:
        if self._subscribers:
            self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the delivery thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _deliver(self) -> None:
        while (event := self._queue.get()) is not None:
            for callback in self._subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception("a pool event subscriber raised on %s; event dropped", event.kind)
