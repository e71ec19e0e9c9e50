"""Using a closed object raises one error type everywhere: ClosedError, a RuntimeError."""

from __future__ import annotations

import pytest

import _tasks
import memwise
from _actor_tasks import Counter
from memwise import shared
from memwise.errors import ClosedError, MemwiseError

pytestmark = pytest.mark.timeout(60)


def test_closed_error_is_a_runtime_error_and_exported():
    assert issubclass(ClosedError, RuntimeError)
    assert issubclass(ClosedError, MemwiseError)
    assert memwise.ClosedError is ClosedError
    assert memwise.BufferPool is memwise.buffers.BufferPool
    assert memwise.SharedMemoryError is memwise.errors.SharedMemoryError


def test_worker_pool_after_shutdown():
    pool = memwise.WorkerPool(1)
    pool.shutdown()
    with pytest.raises(ClosedError, match="shutdown"):
        pool.submit(_tasks.square, 2)


def test_actor_after_close():
    actor = memwise.spawn(Counter)
    assert actor.call("add", 1).result(_tasks.WAIT) == 1
    actor.close()
    with pytest.raises(ClosedError, match="closed"):
        actor.call("add", 1)


def test_buffer_pool_after_close():
    pool = memwise.BufferPool(16, size=1)
    pool.close()
    with pytest.raises(ClosedError, match="closed"):
        pool.acquire()


def test_slot_pool_after_close():
    pool = shared.SlotPool(sweep=False)
    pool.close()
    with pytest.raises(ClosedError, match="closed"):
        pool.allocate(1024)
