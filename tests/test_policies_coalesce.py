"""Latest wins: a task cancels the queued, not-yet-started tasks with the same coalesce tag."""

from __future__ import annotations

import concurrent.futures

import _policy_tasks
from _policy_tasks import WAIT
from _tasks import read_pid, write_atomic
from memwise import WorkerPool


def start_blocking_request(pool, tmp_path, **options):
    """Submit a request that occupies the pool's worker until the test releases it."""
    future = pool.options(**options).submit(
        _policy_tasks.block_labelled, "first", tmp_path / "pid", tmp_path / "go"
    )
    read_pid(tmp_path / "pid")  # it is running: nothing can cancel it any more
    return future


def test_a_burst_runs_the_first_and_the_last_and_cancels_the_rest(tmp_path):
    with WorkerPool(1) as pool:
        first = start_blocking_request(pool, tmp_path, coalesce="preview")
        rest = [
            pool.options(coalesce="preview").submit(_policy_tasks.index, i) for i in range(1, 100)
        ]
        middle, last = rest[:-1], rest[-1]
        # The superseded requests are done (cancelled) at once, not when the worker frees up.
        _, not_done = concurrent.futures.wait(middle, timeout=WAIT)
        assert not not_done
        assert all(f.cancelled() for f in middle)
        assert not first.done() and not last.done()
        write_atomic(tmp_path / "go", "")
        assert first.result(WAIT) == ("first", 1)
        assert last.result(WAIT) == 99
        assert not first.cancelled() and not last.cancelled()
        snapshot = pool.snapshot()
    assert snapshot.cancelled == 98
    assert snapshot.done == 2


def test_tags_coalesce_separately_and_untagged_tasks_are_untouched(tmp_path):
    with WorkerPool(1) as pool:
        first = start_blocking_request(pool, tmp_path)
        a = [pool.options(coalesce="a").submit(_policy_tasks.index, i) for i in range(3)]
        b = [pool.options(coalesce="b").submit(_policy_tasks.index, 10 + i) for i in range(3)]
        plain = [pool.submit(_policy_tasks.index, 20 + i) for i in range(3)]
        concurrent.futures.wait(a[:-1] + b[:-1], timeout=WAIT)
        write_atomic(tmp_path / "go", "")
        first.result(WAIT)
        assert [f.cancelled() for f in a] == [True, True, False]
        assert [f.cancelled() for f in b] == [True, True, False]
        assert a[-1].result(WAIT) == 2
        assert b[-1].result(WAIT) == 12
        assert [f.result(WAIT) for f in plain] == [20, 21, 22]
