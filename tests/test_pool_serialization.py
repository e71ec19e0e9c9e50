"""What travels between the parent and its workers, and what happens when something can't."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import RemoteError, RemoteTraceback, SerializationError

pytestmark = pytest.mark.timeout(45)


def assert_healthy(pool) -> None:
    assert pool.submit(_tasks.square, 12).result(WAIT) == 144


# --------------------------------------------------------------------------------------------
# arguments and results
# --------------------------------------------------------------------------------------------


def test_unpicklable_argument_fails_only_its_future(shared_pool):
    future = shared_pool.submit(_tasks.identity, threading.Lock())
    with pytest.raises(SerializationError) as info:
        future.result(WAIT)
    assert isinstance(info.value, TypeError)  # as pickle's own error would be
    assert "could not pickle" in str(info.value)
    assert "identity" in str(info.value)  # names the call
    assert_healthy(shared_pool)


def test_unpicklable_argument_in_map(shared_pool):
    results = shared_pool.map(_tasks.identity, [1, threading.Lock(), 3], chunksize=1)
    assert next(results) == 1
    with pytest.raises(SerializationError):
        next(results)
    assert_healthy(shared_pool)


def test_argument_that_cannot_be_unpickled_in_the_worker(shared_pool):
    future = shared_pool.submit(_tasks.identity, _tasks.Unloadable())
    with pytest.raises(SerializationError, match="refuses to be unpickled"):
        future.result(WAIT)
    assert_healthy(shared_pool)


def test_unpicklable_result(shared_pool):
    future = shared_pool.submit(_tasks.return_lock)
    with pytest.raises(SerializationError) as info:
        future.result(WAIT)
    assert "return_lock" in str(info.value)  # names the function whose result failed
    assert "could not pickle" in str(info.value)
    assert_healthy(shared_pool)


def test_result_that_cannot_be_unpickled_in_the_parent(shared_pool):
    future = shared_pool.submit(_tasks.return_unloadable)
    with pytest.raises(SerializationError, match="refuses to be unpickled"):
        future.result(WAIT)
    assert_healthy(shared_pool)


def test_large_arguments_and_results(shared_pool):
    # Larger than any pipe buffer, both ways.
    payload = _tasks.make_bytes(8 * 1024 * 1024 + 17)
    assert shared_pool.submit(_tasks.length, payload).result(WAIT) == len(payload)
    assert shared_pool.submit(_tasks.make_bytes, 5 * 1024 * 1024 + 3).result(WAIT) == (
        _tasks.make_bytes(5 * 1024 * 1024 + 3)
    )
    many = [shared_pool.submit(_tasks.identity, payload[: 300_000 + i]) for i in range(8)]
    assert [len(f.result(WAIT)) for f in many] == [300_000 + i for i in range(8)]
    assert_healthy(shared_pool)


def test_numpy_arrays_round_trip(shared_pool):
    array = np.arange(300_000, dtype=np.float64).reshape(1000, 300)
    result = shared_pool.submit(_tasks.identity, array).result(WAIT)
    assert isinstance(result, np.ndarray)
    assert result.dtype == array.dtype
    assert np.array_equal(result, array)
    assert shared_pool.submit(np.sum, array).result(WAIT) == array.sum()


# --------------------------------------------------------------------------------------------
# exceptions
# --------------------------------------------------------------------------------------------


def test_picklable_exception_comes_back_as_its_own_type(shared_pool):
    future = shared_pool.submit(_tasks.raise_custom, "custom trouble")
    with pytest.raises(_tasks.CustomError, match="custom trouble") as info:
        future.result(WAIT)
    assert type(info.value) is _tasks.CustomError
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_custom" in cause.tb
    assert "CustomError: custom trouble" in cause.tb
    assert "raise_custom" in str(cause)  # printed with the parent's traceback


def test_exception_that_cannot_be_unpickled_becomes_remote_error(shared_pool):
    future = shared_pool.submit(_tasks.raise_two_arg, "left", "right")
    with pytest.raises(RemoteError) as info:
        future.result(WAIT)
    error = info.value
    assert error.type_name == "TwoArgError"
    assert error.message == "left and right went wrong"
    assert "TwoArgError" in str(error)
    assert "left and right went wrong" in str(error)
    assert "raise_two_arg" in error.tb
    assert_healthy(shared_pool)


def test_exception_that_cannot_be_pickled_becomes_remote_error(shared_pool):
    future = shared_pool.submit(_tasks.raise_locked, "holding a lock")
    with pytest.raises(RemoteError) as info:
        future.result(WAIT)
    assert info.value.type_name == "LockedError"
    assert "holding a lock" in str(info.value)
    assert "raise_locked" in info.value.tb
    assert_healthy(shared_pool)


def test_unpicklable_exception_in_map_is_raised_at_its_item(shared_pool):
    results = shared_pool.map(_tasks.raise_two_arg, ["a", "b"], ["x", "y"], chunksize=2)
    with pytest.raises(RemoteError, match="a and x went wrong"):
        next(results)
    assert_healthy(shared_pool)


def test_serialization_errors_do_not_count_as_crashes():
    with WorkerPool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        for fn, args in [
            (_tasks.identity, (threading.Lock(),)),
            (_tasks.return_lock, ()),
            (_tasks.return_unloadable, ()),
            (_tasks.raise_two_arg, (1, 2)),
        ]:
            with pytest.raises((SerializationError, RemoteError)):
                pool.submit(fn, *args).result(WAIT)
        # Same worker all along: nothing was killed or restarted.
        assert pool.submit(_tasks.getpid).result(WAIT) == pid
        assert pool.snapshot().restarts == 0


@pytest.mark.timeout(60)
def test_function_defined_in_an_interactive_main_module():
    # python -c, a REPL or a notebook: functions live in a __main__ that workers cannot
    # import, so they must travel by value (cloudpickle), like lambdas.
    script = textwrap.dedent(
        """
        from memwise import WorkerPool

        def triple(x):
            return 3 * x

        with WorkerPool(1) as pool:
            print(pool.submit(triple, 2).result(30))
            print(list(pool.map(triple, [1, 2])))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["6", "[3, 6]"]
