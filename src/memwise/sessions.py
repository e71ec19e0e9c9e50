"""Sessions: one actor per key (an image, a file), the few most recently used kept warm.

An application that opens documents one after another keeps an actor per document; switching
closes the least recently used beyond ``keep``, and ``idle`` closes those unused for a while,
so the processes, and all the memory they allocated, go back to the OS.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from memwise.actors import Actor

__all__ = ["Sessions"]

K = TypeVar("K", bound=Hashable)


class Sessions(Generic[K]):
    """One actor per key (an image, a file), the ``keep`` most recently used kept warm.

    ``sessions[key]`` returns the key's actor, creating it with ``factory(key)``; creating one
    beyond ``keep`` closes the least recently used (in the background: its process ends after
    its current call), so about ``keep`` processes hold memory. With ``idle``, an actor
    unused for that many seconds is closed too, so an application that stops using its
    sessions gives their memory back.
    """

    def __init__(
        self, factory: Callable[[K], Actor], keep: int = 2, idle: float | None = None
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if idle is not None and idle <= 0:
            raise ValueError(f"idle must be a positive number of seconds or None, got {idle}")
        self._factory = factory
        self.keep = keep
        self.idle = idle
        self._actors: OrderedDict[K, Actor] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def __getitem__(self, key: K) -> Actor:
        with self._lock:
            actor = self._actors.get(key)
            if actor is not None:
                self._actors.move_to_end(key)
                actor.touch()
                return actor
            actor = self._factory(key)
            self._actors[key] = actor
            evicted = []
            while len(self._actors) > self.keep:
                evicted.append(self._actors.popitem(last=False)[1])
            if self.idle is not None and self._reaper is None:
                self._stop.clear()
                self._reaper = threading.Thread(
                    target=self._reap, args=(self.idle,), name="memwise-sessions", daemon=True
                )
                self._reaper.start()
        for old in evicted:
            # Without waiting: switching to a new key must not wait for the old key's call.
            old.close(wait=False)
        return actor

    def _reap(self, idle: float) -> None:
        """Close actors unused for ``idle`` seconds, until the sessions are closed."""
        while not self._stop.wait(min(max(idle / 4, 0.05), 1.0)):
            with self._lock:
                expired = [key for key, actor in self._actors.items() if actor.idle_for >= idle]
                actors = [self._actors.pop(key) for key in expired]
            for actor in actors:
                actor.close(wait=False)

    def __contains__(self, key: object) -> bool:
        return key in self._actors

    def __len__(self) -> int:
        return len(self._actors)

    def keys(self) -> list[K]:
        """Warm keys, least recently used first."""
        with self._lock:
            return list(self._actors)

    def close(self, key: K | None = None) -> None:
        """Close one session, or all of them."""
        with self._lock:
            if key is None:
                actors = list(self._actors.values())
                self._actors.clear()
                reaper, self._reaper = self._reaper, None
                self._stop.set()
            else:
                popped = self._actors.pop(key, None)
                actors = [] if popped is None else [popped]
                reaper = None
        if reaper is not None:
            reaper.join()
        for actor in actors:
            actor.close()

    def __enter__(self) -> Sessions[K]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
