"""Runs inside a private mount namespace whose /dev/shm is a tiny tmpfs (see test_memory_faults).

Sends and receives arrays larger than /dev/shm can hold, with several in flight at once, and
prints one JSON line: how each task ended, and whether the pool still works afterwards.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np

from memwise import WorkerPool


def echo(array: np.ndarray) -> float:
    return float(array.sum())


def produce(n: int) -> np.ndarray:
    return np.ones(n)


def main() -> None:
    outcomes: Counter[str] = Counter()
    big = np.ones(3 << 20)  # 24 MB, against a 16 MB /dev/shm
    with WorkerPool(2, shm_fallback=sys.argv[1] == "fallback") as pool:
        futures = [pool.submit(echo, big) for _ in range(4)]
        futures += [pool.submit(produce, 3 << 20) for _ in range(4)]
        for future in futures:
            try:
                result = future.result(120)
            except Exception as exc:
                outcomes[type(exc).__name__] += 1
            else:
                if isinstance(result, np.ndarray):
                    ok = result.size == big.size and bool((result == 1.0).all())
                else:
                    ok = result == float(big.size)
                outcomes["ok" if ok else "wrong"] += 1
        healthy = pool.submit(echo, np.ones(10)).result(60) == 10.0
    print(json.dumps({"outcomes": outcomes, "healthy": healthy}))


if __name__ == "__main__":
    main()
