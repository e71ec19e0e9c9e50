"""The event-stream broadcaster keeps streams fed when a snapshot fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from _tasks import WAIT
from memwise.server.broadcast import Broadcaster

pytestmark = pytest.mark.timeout(60)


class FlakySnapshots:
    """Fails its first ``failures`` calls (as a pool shutting down does), then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("the pool is shutting down")
        return '{"state":"running"}'


async def _next_snapshot(broadcaster: Broadcaster) -> bytes:
    client = broadcaster.connect(None)
    stream = broadcaster.stream(client)
    try:
        assert (await anext(stream)).startswith(b"retry:")
        return await asyncio.wait_for(anext(stream), WAIT)
    finally:
        broadcaster.close()
        await stream.aclose()


def test_a_failed_snapshot_is_logged_and_the_next_tick_retries(shared_pool, caplog):
    snapshots = FlakySnapshots(failures=2)
    broadcaster = Broadcaster(
        shared_pool, snapshots, running=lambda: True, max_clients=1, buffer=8, interval=0.01
    )
    chunk = asyncio.run(_next_snapshot(broadcaster))
    assert chunk.startswith(b"event: snapshot\ndata: ")
    assert snapshots.calls == 3
    assert caplog.text.count("a snapshot for the event streams failed") == 2


def test_snapshots_end_quietly_once_the_pool_has_stopped(shared_pool, caplog):
    caplog.set_level(logging.INFO, logger="memwise")
    snapshots = FlakySnapshots(failures=10**9)

    async def scenario() -> None:
        broadcaster = Broadcaster(
            shared_pool, snapshots, running=lambda: False, max_clients=1, buffer=8, interval=0.01
        )
        client = broadcaster.connect(None)
        stream = broadcaster.stream(client)
        try:
            assert (await anext(stream)).startswith(b"retry:")
            while "no longer running" not in caplog.text:
                await asyncio.sleep(0.01)
        finally:
            broadcaster.close()
            await stream.aclose()

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert snapshots.calls == 1
    assert "Traceback" not in caplog.text
