"""A program that is SIGKILLed by tests/chaos/test_parent_death.py at a chosen moment.

``python _parent.py PHASE MARKER``: builds a pool, reaches PHASE, writes MARKER, then waits to
be killed. Phases: ``startup`` (workers still in their initializer), ``dispatch`` (many tasks
with large arrays queued and running), ``handover`` (workers returning large results).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from memwise import WorkerPool


def slow_init() -> None:
    time.sleep(60)


def hold(array: np.ndarray, seconds: float) -> float:
    time.sleep(seconds)
    return float(array[0])


def produce(n: int) -> np.ndarray:
    return np.full(n, 1.0)


def mark(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


def main(phase: str, marker: str) -> None:
    if phase == "startup":
        # The constructor waits for READY: mark from a thread while it blocks.
        import threading

        threading.Timer(1.0, mark, (marker,)).start()
        WorkerPool(2, initializer=slow_init, init_timeout=120)
        return
    with WorkerPool(2) as pool:
        if phase == "dispatch":
            big = np.ones(4 << 20)  # 32 MB: travels through shared-memory slots
            futures = [pool.submit(hold, big, 30.0) for _ in range(20)]
        else:
            futures = [pool.submit(produce, 4 << 20) for _ in range(200)]
        time.sleep(0.5)
        mark(marker)
        for future in futures:
            future.result()
    time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
