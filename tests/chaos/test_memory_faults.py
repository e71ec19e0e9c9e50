"""Shared memory that runs out, and a memory budget under a burst: typed errors, never SIGBUS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memwise import MemoryBudget, WorkerPool
from memwise.benchmarks import _faults

HERE = Path(__file__).parent
WAIT = 120.0
MiB = 1024 * 1024


def private_namespace_works() -> str | None:
    """Why a tiny /dev/shm cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"this machine refuses a private mount namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.parametrize("mode", ["strict", "fallback"])
def test_a_full_dev_shm_gives_typed_errors_or_the_inline_path_never_sigbus(mode):
    reason = private_namespace_works()
    if reason:
        pytest.skip(reason)
    script = (
        "mount -t tmpfs -o size=16m tmpfs /dev/shm && "
        f"exec {sys.executable} {HERE / '_full_shm.py'} {mode}"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["healthy"]
    outcomes = report["outcomes"]
    assert outcomes.get("wrong", 0) == 0
    assert set(outcomes) <= {"ok", "SharedMemoryError", "SharedMemoryExhausted"}, outcomes
    if mode == "fallback":  # pickling through the pipe instead: everything completes
        assert outcomes == {"ok": 8}
    else:  # 24 MB arguments cannot fit a 16 MB /dev/shm: those futures fail, typed
        assert outcomes.get("SharedMemoryExhausted", 0) + outcomes.get("SharedMemoryError", 0)


def test_a_budget_under_a_burst_of_large_requests_never_admits_past_its_limit(tmp_path):
    request = 400 * MiB
    # Room for two requests beyond what is in use now (the budget measures real memory too).
    budget = MemoryBudget(MemoryBudget(1 << 40).in_use() + 2 * request + request // 2)
    with WorkerPool(4, budget=budget) as pool:
        futures = [
            pool.options(memory=request).submit(_faults.record_interval, str(tmp_path), i, 0.15)
            for i in range(16)
        ]
        for future in futures:
            future.result(WAIT)
    intervals = [
        tuple(map(float, path.read_text().split())) for path in tmp_path.glob("*.interval")
    ]
    assert len(intervals) == 16
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert 1 <= most <= 2


def test_a_tiny_shared_memory_cap_under_load_completes_or_fails_typed():
    from memwise import shared
    from memwise.shared import SlotPool

    previous = shared.default_pool()
    tiny = SlotPool(cap=10 * MiB)
    shared.set_default_pool(tiny)
    try:
        with WorkerPool(2) as pool:
            arrays = [np.full(512 * 1024, float(i)) for i in range(24)]  # 4 MB each
            futures = [pool.submit(_faults.identity, a) for a in arrays]
            for i, future in enumerate(futures):
                try:
                    assert float(future.result(WAIT)[0]) == float(i)
                except shared_errors() as exc:
                    assert "cap" in str(exc)
            assert pool.submit(_faults.square, 5).result(WAIT) == 25
    finally:
        shared.set_default_pool(previous)
        tiny.close()


def shared_errors() -> tuple[type[BaseException], ...]:
    from memwise.errors import SharedMemoryError

    return (SharedMemoryError,)
