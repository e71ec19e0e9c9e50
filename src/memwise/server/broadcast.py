"""Server-sent events for many clients from one pool subscription and one snapshot ticker.

The pool's delivery thread hands events over with one lock and at most one loop wake-up per
batch; the event loop fans them out to each client's bounded buffer. A client that reads too
slowly loses its oldest events (and is told how many) instead of making the server's memory
grow. Snapshots are taken once per tick, whatever the number of clients, and a client only ever
holds the latest one. With no client connected the pool is not even subscribed to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, Protocol

from memwise.pool.events import PoolEvent

log = logging.getLogger("memwise")
KEEPALIVE_S = 15.0
# Events waiting for the event loop; past this the oldest go (and every client is told).
PENDING_LIMIT = 10_000


class Subscription(Protocol):
    def close(self) -> None: ...


class Subscribable(Protocol):
    def subscribe(self, callback: Callable[[PoolEvent], None]) -> Subscription: ...


class TooManyClients(Exception):
    """Every event-stream place is taken."""


class _Client:
    def __init__(self, kinds: frozenset[str] | None, buffer: int) -> None:
        self.kinds = kinds
        self.events: deque[bytes] = deque(maxlen=buffer)
        self.lost = 0
        self.snapshot: bytes | None = None
        self.wake = asyncio.Event()


class Broadcaster:
    """Fans pool events and periodic snapshots out to at most ``max_clients`` streams."""

    def __init__(
        self,
        pool: Subscribable,
        snapshot_json: Callable[[], str],
        *,
        running: Callable[[], bool],
        max_clients: int,
        buffer: int,
        interval: float,
    ) -> None:
        self._pool = pool
        self._snapshot_json = snapshot_json
        self._running = running
        self.max_clients = max_clients
        self._buffer = buffer
        self._interval = interval
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._pending: deque[PoolEvent] = deque(maxlen=PENDING_LIMIT)
        self._overflow = 0
        self._scheduled = False
        self._wanted: frozenset[str] | None = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def clients(self) -> int:
        return len(self._clients)

    def connect(self, kinds: Collection[str] | None) -> _Client:
        """A new client on the running loop; raises :class:`TooManyClients` when full."""
        if len(self._clients) >= self.max_clients:
            raise TooManyClients(f"{self.max_clients} event streams are open already")
        self._loop = asyncio.get_running_loop()
        client = _Client(frozenset(kinds) if kinds is not None else None, self._buffer)
        self._clients.add(client)
        self._update_wanted()
        if self._subscription is None:
            self._subscription = self._pool.subscribe(self._on_event)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick())
        return client

    def disconnect(self, client: _Client) -> None:
        self._clients.discard(client)
        self._update_wanted()
        if not self._clients:
            if self._subscription is not None:
                self._subscription.close()
                self._subscription = None
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    def close(self) -> None:
        """End every stream (callable from any thread, e.g. a signal handler)."""
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    async def stream(self, client: _Client) -> AsyncIterator[bytes]:
        """The bytes of one client's event stream, until it leaves or the server stops."""
        try:
            yield b"retry: 2000\n\n"
            while not self._closed:
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                client.wake.clear()
                parts = []
                if client.lost:
                    lost = json.dumps({"dropped": client.lost})
                    parts.append(f"event: lost\ndata: {lost}\n\n".encode())
                    client.lost = 0
                parts.extend(client.events)
                client.events.clear()
                if client.snapshot is not None:
                    parts.append(client.snapshot)
                    client.snapshot = None
                if parts:
                    yield b"".join(parts)
        finally:
            self.disconnect(client)

    # -- the pool's delivery thread ---------------------------------------------------------

    def _on_event(self, event: PoolEvent) -> None:
        wanted = self._wanted
        if wanted is not None and event.kind not in wanted:
            return
        with self._lock:
            if len(self._pending) == PENDING_LIMIT:
                self._overflow += 1
            self._pending.append(event)
            if self._scheduled or self._loop is None:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed under us: the server is gone
            pass

    # -- the event loop ---------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            events = list(self._pending)
            self._pending.clear()
            overflow, self._overflow = self._overflow, 0
            self._scheduled = False
        touched: set[_Client] = set()
        for client in self._clients:
            if overflow:
                client.lost += overflow
                touched.add(client)
        for event in events:
            message: bytes | None = None
            for client in self._clients:
                if client.kinds is not None and event.kind not in client.kinds:
                    continue
                if message is None:
                    message = _sse("pool", event.to_dict())
                if len(client.events) == client.events.maxlen:
                    client.lost += 1
                client.events.append(message)
                touched.add(client)
        for client in touched:
            client.wake.set()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._clients and not self._closed:
            try:
                text = await loop.run_in_executor(None, self._snapshot_json)
            except Exception:
                # Typically the pool shutting down under us. The streams stay open (pool
                # events still come); snapshots stop only once the pool has stopped for good.
                if not await loop.run_in_executor(None, self._running):
                    log.info("the pool is no longer running: event streams get no more snapshots")
                    return
                log.exception("a snapshot for the event streams failed; the next tick retries")
            else:
                message = f"event: snapshot\ndata: {text}\n\n".encode()
                for client in self._clients:
                    client.snapshot = message
                    client.wake.set()
            # A fixed rate, not a fixed pause: taking the snapshot does not slow the ticks.
            due = max(due + self._interval, loop.time())
            await asyncio.sleep(due - loop.time())

    def _wake_all(self) -> None:
        for client in self._clients:
            client.wake.set()

    def _update_wanted(self) -> None:
        wanted: set[str] = set()
        for client in self._clients:
            if client.kinds is None:
                self._wanted = None
                return
            wanted |= client.kinds
        self._wanted = frozenset(wanted)


def _sse(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
