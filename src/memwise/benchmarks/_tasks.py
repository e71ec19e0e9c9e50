"""Task functions the benchmarks send to worker processes.

They live in an importable module, not in the benchmark scripts, so that every start method
(fork, forkserver, spawn, loky's own) can pickle them by reference.
"""

from __future__ import annotations

import os

import numpy as np

from memwise.memory import private_memory

# 2 MiB of float64. The ufuncs are transcendental, so the work is bound by each core's arithmetic
# rather than by the memory bandwidth the two workers share, which would blur the scaling figure.
_CPU_ITEMS = 262_144
_CPU_PASSES = 8


def noop() -> None:
    """Do nothing: what is left is the pool's own cost."""


def inc(x: int) -> int:
    """The smallest task that still moves an argument and a result."""
    return x + 1


def numpy_work() -> float:
    """About 40 ms of single-threaded elementwise numpy on a 2 MiB array.

    Elementwise ufuncs never call BLAS, so thread pools inside numpy cannot borrow the other core
    and inflate the 1-worker figure. The array is made here rather than passed in so that the
    time measured is computation, not pickling.
    """
    x = np.linspace(0.0, 1.0, _CPU_ITEMS)
    y = np.empty_like(x)
    for _ in range(_CPU_PASSES):
        np.sin(x, out=y)
        np.exp(y, out=y)
        np.sqrt(y, out=y)
        np.add(x, y, out=x)
    return float(x[-1])


# What ``retain`` keeps alive for the life of its worker process: a leak, on purpose.
_retained: list[bytes] = []


def retain(nbytes: int) -> tuple[int, int]:
    """Keep ``nbytes`` alive in this worker for good; return ``(pid, private memory)``.

    ``b"x" * n`` writes every page, so the leak is resident at once (``bytes(n)`` may get
    untouched zero pages from calloc). Private memory is measured last: the most this task
    leaves its worker holding.
    """
    _retained.append(b"x" * nbytes)
    return os.getpid(), private_memory()


def one_minus(array: np.ndarray) -> np.ndarray:
    """``1 - a``: the transfer benchmark's task, a full-size result for a full-size argument."""
    return 1 - array


def timed_one_minus(array: np.ndarray) -> tuple[float, np.ndarray]:
    """``1 - a`` and the seconds it took in the worker: the compute share of a round trip."""
    import time

    start = time.perf_counter()
    result = 1 - array
    return time.perf_counter() - start, result


def one_minus_in_slot(array: np.ndarray) -> np.ndarray:
    """``1 - a`` written into a shared-memory array: the result crosses back with no copy."""
    from memwise import shared

    out = shared.empty(array.shape, array.dtype)
    np.subtract(1, array, out=out)
    return out
