"""Priority: higher runs first among queued tasks, never ahead of its own key's earlier tasks."""

from __future__ import annotations

import _policy_tasks
from _tasks import WAIT, read_pid, wait_until, write_atomic
from memwise import WorkerPool


def run_behind_a_blocker(pool, tmp_path, submit_queued):
    """Block the pool's one worker, queue tasks with ``submit_queued()``, then release it.

    Returns the queued tasks' results; each is ``(label, n)`` with n the order they ran in.
    """
    first = pool.submit(_policy_tasks.block_labelled, "first", tmp_path / "pid", tmp_path / "go")
    read_pid(tmp_path / "pid")
    futures = submit_queued()
    # Everything is queued before the worker is free, so only the policy decides the order.
    assert wait_until(lambda: pool.snapshot().queued == len(futures))
    write_atomic(tmp_path / "go", "")
    assert first.result(WAIT) == ("first", 1)
    return [f.result(WAIT) for f in futures]


def ran_order(results):
    return [label for label, _ in sorted(results, key=lambda r: r[1])]


def test_higher_priority_runs_first(tmp_path):
    with WorkerPool(1) as pool:

        def submit_queued():
            low = [pool.submit(_policy_tasks.labelled, f"low{i}") for i in range(3)]
            mid = [
                pool.options(priority=1).submit(_policy_tasks.labelled, f"mid{i}") for i in range(3)
            ]
            high = [
                pool.options(priority=5).submit(_policy_tasks.labelled, f"high{i}")
                for i in range(3)
            ]
            return low + mid + high

        results = run_behind_a_blocker(pool, tmp_path, submit_queued)
    # Highest first; equal priorities keep submission order.
    assert ran_order(results) == [
        *(f"high{i}" for i in range(3)),
        *(f"mid{i}" for i in range(3)),
        *(f"low{i}" for i in range(3)),
    ]


def test_priority_never_reorders_a_key(tmp_path):
    with WorkerPool(1) as pool:

        def submit_queued():
            # Key k's later tasks have ever higher priority; they still run in submission
            # order. Unkeyed high-priority work overtakes k's low-priority head.
            keyed = [
                pool.options(key="k", priority=i).submit(_policy_tasks.labelled, f"k{i}")
                for i in range(4)
            ]
            low = [pool.submit(_policy_tasks.labelled, f"low{i}") for i in range(2)]
            high = [
                pool.options(priority=9).submit(_policy_tasks.labelled, f"high{i}")
                for i in range(2)
            ]
            return keyed + low + high

        order = ran_order(run_behind_a_blocker(pool, tmp_path, submit_queued))
    keyed = [label for label in order if label.startswith("k")]
    assert keyed == ["k0", "k1", "k2", "k3"]
    assert order[:2] == ["high0", "high1"]
    assert order.index("low0") < order.index("low1")
