"""BufferPool: leasing, exhaustion, misuse, threads, shared buffers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from memwise import shared
from memwise.buffers import BufferPool
from memwise.errors import BufferPoolExhausted, ClosedError

FRAME = (480, 640, 3)


@pytest.fixture(params=[False, True], ids=["private", "shared"])
def frames(request: pytest.FixtureRequest):
    with BufferPool(FRAME, np.uint8, size=3, shared=request.param) as pool:
        yield pool


def test_buffers_are_preallocated_and_reused(frames: BufferPool) -> None:
    first = frames.acquire()
    assert first.shape == FRAME and first.dtype == np.uint8 and first.flags.writeable
    frames.release(first)
    with frames.lease() as again:
        assert again is first  # the warm buffer comes back
    assert frames.stats().acquired == 2 and frames.stats().in_use == 0


def test_exhausted_pool_waits_then_raises(frames: BufferPool) -> None:
    held = [frames.acquire() for _ in range(3)]
    with pytest.raises(BufferPoolExhausted, match="all 3 buffers"):
        frames.acquire(timeout=0.01)
    got: list[np.ndarray] = []
    waiter = threading.Thread(target=lambda: got.append(frames.acquire(timeout=30)))
    waiter.start()
    while frames.stats().waits < 2:  # the waiter is blocked: now give one back
        threading.Event().wait(0.001)
    frames.release(held.pop())
    waiter.join()
    held += got
    stats = frames.stats()
    assert (stats.in_use, stats.peak_in_use, stats.waits, stats.timeouts) == (3, 3, 2, 1)
    for buffer in held:
        frames.release(buffer)


def test_misuse_is_a_value_error(frames: BufferPool) -> None:
    buffer = frames.acquire()
    with pytest.raises(ValueError, match="not a buffer of"):
        frames.release(buffer[10:])  # a view
    with pytest.raises(ValueError, match="not a buffer of"):
        frames.release(np.zeros(FRAME, np.uint8))
    frames.release(buffer)
    with pytest.raises(ValueError, match="already released"):
        frames.release(buffer)
    with pytest.raises(ValueError, match="size=0"), BufferPool(FRAME, size=0):
        pass


def test_lease_releases_on_error(frames: BufferPool) -> None:
    with pytest.raises(RuntimeError), frames.lease():
        raise RuntimeError("boom")
    assert frames.stats().in_use == 0


def test_eight_threads_never_share_a_buffer() -> None:
    pool = BufferPool((64, 64), np.int64, size=3)
    holders: dict[int, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def work(me: int) -> None:
        for _ in range(300):
            with pool.lease(timeout=30) as buffer:
                with lock:
                    if id(buffer) in holders:
                        errors.append(f"thread {me} got the buffer of {holders[id(buffer)]}")
                    holders[id(buffer)] = me
                buffer.fill(me)
                threading.Event().wait(0)  # let the other threads run meanwhile
                if not (buffer == me).all():
                    errors.append(f"thread {me}'s buffer was written by someone else")
                with lock:
                    del holders[id(buffer)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = pool.stats()
    # How far the threads overlapped depends on scheduling; never beyond the pool size.
    assert stats.acquired == 8 * 300 and stats.in_use == 0 and 1 <= stats.peak_in_use <= 3
    pool.close()


def test_close_fails_waiters_and_frees_returned_buffers() -> None:
    pool = BufferPool(10, size=1, shared=True)
    held = pool.acquire()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire()
        except ClosedError as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    while pool.stats().waits == 0:
        threading.Event().wait(0.001)
    pool.close()
    waiter.join()
    assert "closed" in str(outcome[0])
    assert shared.find_slot(held) is not None  # a leased buffer stays valid after close
    pool.release(held)  # and its slot goes back now
    assert shared.find_slot(held) is None


def test_shared_buffers_live_in_slots(frames: BufferPool) -> None:
    with frames.lease() as buffer:
        assert (shared.find_slot(buffer) is not None) == frames.shared


def test_buffers_benchmark_runs_and_cleans_up() -> None:
    from memwise.benchmarks import buffers as bench

    result = bench.run(quick=True)
    assert set(result["results"]) >= {"BufferPool", "np.empty", "slot reuse 48MB"}
    assert all(figures["write_us"] > 0 for figures in result["results"].values())
    assert "slot reuse 48MB / fresh segment 48MB" in result["ratios"]


def test_available_counts_free_buffers(frames: BufferPool) -> None:
    assert frames.available == 3
    held = frames.acquire()
    assert frames.available == 2
    frames.release(held)
    assert frames.available == 3


def test_resize_only_while_nothing_is_leased(frames: BufferPool) -> None:
    held = frames.acquire()
    with pytest.raises(ValueError, match="leased"):
        frames.resize((240, 320, 3))
    frames.release(held)
    frames.resize((240, 320), np.float32)
    with frames.lease() as buffer:
        assert buffer.shape == (240, 320) and buffer.dtype == np.float32
    assert frames.available == 3


def test_auto_release_lease_returns_when_collected(frames: BufferPool) -> None:
    import gc

    frame = frames.acquire(auto_release=True)
    frame[...] = 9
    view = frame[10:20]
    del frame
    gc.collect()
    assert frames.available == 2  # a view still uses it
    del view
    gc.collect()
    assert frames.available == 3
    again = frames.acquire(auto_release=True)
    frames.release(again)  # explicit release stays the normal path
    assert frames.available == 3 and frames.stats().in_use == 0
