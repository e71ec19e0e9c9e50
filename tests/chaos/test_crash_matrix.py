"""Every failure kind at every point of a task's way: a typed error on that future only.

The matrix follows CPython's executor crash tests (exception, ``sys.exit``, ``os._exit``,
segfault, SIGKILL while pickling the call, unpickling it, running it, pickling the result,
unpickling it), plus the two shared-memory moments: a worker dying while it holds a lent slot,
and while it is filling a result slot. After each fault the same pool must run a task again.
"""

from __future__ import annotations

import numpy as np
import pytest

from memwise import WorkerPool
from memwise.benchmarks import _faults
from memwise.errors import SerializationError, WorkerCrashed

WAIT = 60.0
DEATHS = ("os_exit", "segfault", "sigkill")
LARGE = np.arange(2 << 20, dtype=np.float64)  # 16 MB: travels through a shared-memory slot


@pytest.fixture
def pool():
    # One pool per case: a replaced worker is a new process, which the leak check must see end.
    with WorkerPool(2) as pool:
        yield pool


def expected_error(kind: str, point: str) -> tuple[type[BaseException], ...]:
    if point == "lent_slot":
        point = "run"  # the fault strikes in the function, holding the slot
    if kind in DEATHS:
        return (WorkerCrashed,)
    if kind == "exit":
        # SystemExit travels back as itself from the run; at a pickling or unpickling step it
        # is the serialization that failed.
        return (SystemExit,) if point == "run" else (SerializationError,)
    if point == "run":
        return (_faults.InjectedFault,)
    return (SerializationError,)


def submit_with_fault(pool: WorkerPool, kind: str, point: str):
    if point == "unpickle_call":
        return pool.submit(_faults.identity, _faults.FailOnUnpickle(kind))
    if point == "run":
        return pool.submit(_faults.run_fault, kind)
    if point == "pickle_result":
        return pool.submit(_faults.return_failing, kind, "pickle")
    if point == "unpickle_result":
        return pool.submit(_faults.return_failing, kind, "unpickle")
    if point == "lent_slot":
        return pool.submit(_faults.touch_then_fail, LARGE, kind)
    if point == "result_slot":
        return pool.submit(_faults.return_failing, kind, "pickle", LARGE)
    raise AssertionError(point)


def healthy(pool: WorkerPool) -> None:
    assert list(pool.map(_faults.square, range(20))) == [x * x for x in range(20)]
    result = pool.submit(_faults.identity, LARGE).result(WAIT)
    assert np.array_equal(result, LARGE)


WORKER_CASES = [
    (kind, point)
    for point in (*_faults.WORKER_POINTS, "lent_slot", "result_slot")
    for kind in _faults.KINDS
]
PARENT_CASES = [("exception", "pickle_call")] + [
    (kind, "unpickle_result") for kind in _faults.PARENT_KINDS
]


@pytest.mark.parametrize(("kind", "point"), WORKER_CASES)
def test_a_fault_in_the_worker_fails_that_future_only(pool, kind, point):
    bystanders = [pool.submit(_faults.square, i) for i in range(8)]
    future = submit_with_fault(pool, kind, point)
    with pytest.raises(expected_error(kind, point)):
        future.result(WAIT)
    assert [f.result(WAIT) for f in bystanders] == [i * i for i in range(8)]
    healthy(pool)


@pytest.mark.parametrize(("kind", "point"), PARENT_CASES)
def test_a_fault_in_the_parent_fails_that_future_only(pool, kind, point):
    if point == "pickle_call":
        future = pool.submit(_faults.identity, _faults.FailOnPickle(kind))
    else:
        future = submit_with_fault(pool, kind, point)
    with pytest.raises(expected_error(kind, point)):
        future.result(WAIT)
    healthy(pool)
