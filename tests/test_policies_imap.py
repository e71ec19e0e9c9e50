"""imap: lazy, with at most ``prefetch`` items outstanding (even behind a slow item), ordered or
not, errors at their item's position, keys; and a progress bar over map and imap."""

from __future__ import annotations

import functools
import itertools
import os
from collections import defaultdict

import pytest

import _policy_tasks
import _tasks
from _tasks import wait_until
from memwise import WorkerPool
from memwise.pool.queue import lane_for

pytestmark = pytest.mark.timeout(60)


class Counted:
    """An input that counts the items pulled from it, against the results consumed.

    ``outstanding`` records, at every pull and at every result received, how many items had
    been pulled and not yet handed back as results: what the pool holds in flight or buffered.
    """

    def __init__(self, items):
        self._items = items
        self.pulled = 0
        self.consumed = 0
        self.outstanding: list[int] = []

    def __iter__(self):
        for item in self._items:
            self.pulled += 1
            self.outstanding.append(self.pulled - self.consumed)
            yield item

    def consume(self, results):
        """Collect ``results``, noting what was outstanding as each arrived."""
        got = []
        for result in results:
            self.outstanding.append(self.pulled - self.consumed)
            self.consumed += 1
            got.append(result)
        return got


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_never_has_more_than_prefetch_outstanding(shared_pool, ordered):
    source = Counted(range(40))
    results = shared_pool.imap(_policy_tasks.index, source, prefetch=3, ordered=ordered)
    assert source.pulled == 0  # nothing is pulled before the first result is asked for
    got = source.consume(results)
    assert (got if ordered else sorted(got)) == list(range(40))
    assert max(source.outstanding) == 3


def test_imap_bound_holds_behind_one_slow_item(tmp_path):
    # Item 0 finishes only after items 1-3 have: the ordered output waits for it with three
    # results ready, and a pool that refilled on completion would pull more input meanwhile.
    prefetch = 4
    others = [tmp_path / str(i) for i in range(1, prefetch)]
    fn = functools.partial(_policy_tasks.first_waits, others, str(tmp_path))
    source = Counted(range(30))
    # Item 0 gets a worker to itself, so the items it waits for can never be queued behind it.
    key_of_lane = {lane_for(f"k{i}", 2): f"k{i}" for i in range(20)}
    with WorkerPool(2) as pool:
        results = pool.imap(
            fn, source, prefetch=prefetch, key=lambda i: key_of_lane[0 if i == 0 else 1]
        )
        got = source.consume(itertools.islice(results, 1))
        assert got == [0]
        assert source.pulled == prefetch  # items 1-3 are done, yet nothing more was pulled
        got += source.consume(results)
    assert got == list(range(30))
    assert max(source.outstanding) == prefetch


def test_imap_unordered_yields_in_completion_order_within_the_bound(tmp_path):
    release = tmp_path / "release"
    fn = functools.partial(_policy_tasks.first_waits, [release], str(tmp_path))
    source = Counted(range(20))
    with WorkerPool(2) as pool:
        results = pool.imap(fn, source, prefetch=4, ordered=False)
        # Item 0 is stuck until released: the others overtake it.
        got = source.consume(itertools.islice(results, 3))
        assert 0 not in got
        _tasks.write_atomic(release, "")
        got += source.consume(results)
    assert sorted(got) == list(range(20))
    assert max(source.outstanding) == 4


def test_imap_error_is_raised_at_its_position_and_the_rest_is_cancelled(tmp_path):
    bad, prefetch, n = 5, 3, 50
    fn = functools.partial(_policy_tasks.fail_item, bad, str(tmp_path))
    source = Counted(range(n))
    with WorkerPool(2) as pool:
        results = pool.imap(fn, source, prefetch=prefetch)
        got = []
        with pytest.raises(ValueError, match="item 5 is bad"):
            for value in results:
                got.append(value)
        assert got == list(range(bad))
        with pytest.raises(StopIteration):
            next(results)
        assert wait_until(lambda: idle(pool.snapshot()))
        # The pool is fine afterwards.
        assert list(pool.imap(_policy_tasks.index, range(3))) == [0, 1, 2]
    executed = sorted(int(name) for name in os.listdir(tmp_path) if name.isdigit())
    assert source.pulled <= bad + prefetch
    assert executed[: bad + 1] == list(range(bad + 1))
    assert max(executed) < source.pulled  # nothing past what was pulled ran


def test_leaving_imap_early_cancels_what_has_not_started(tmp_path):
    release = tmp_path / "release"
    fn = functools.partial(_policy_tasks.first_slow_others_wait, release, str(tmp_path))
    source = Counted(range(50))
    with WorkerPool(2) as pool:
        results = pool.imap(fn, source, prefetch=6)
        assert next(results) == 0  # items 1 and 2 now run (blocked), 3 to 5 wait in the queue
        results.close()  # what a ``break`` out of the loop does
        _tasks.write_atomic(release, "")
        assert wait_until(lambda: idle(pool.snapshot()))
        snapshot = pool.snapshot()
    executed = sorted(int(name) for name in os.listdir(tmp_path) if name.isdigit())
    assert source.pulled == 6
    assert executed == [0, 1, 2]
    assert (snapshot.done, snapshot.cancelled) == (3, 3)


def test_imap_with_key_keeps_each_key_on_its_lane_in_order():
    items = [(f"k{i % 10}", i) for i in range(200)]
    with WorkerPool(2) as pool:
        pids = {row.lane: row.pid for row in pool.snapshot().workers}
        results = list(
            pool.imap(
                _policy_tasks.item_of, items, key=lambda item: item[0], prefetch=16, ordered=False
            )
        )
    assert len(results) == 200
    runs = defaultdict(list)
    for key, seq, pid, t in results:
        runs[key].append((seq, pid, t))
    for key, key_runs in runs.items():
        assert {pid for _, pid, _ in key_runs} == {pids[lane_for(key, 2)]}
        times = [t for _, _, t in sorted(key_runs)]
        assert times == sorted(times)


def test_imap_rejects_a_bad_prefetch(shared_pool):
    with pytest.raises(ValueError, match="prefetch"):
        shared_pool.imap(_policy_tasks.index, range(3), prefetch=0)


def test_a_progress_bar_over_map_and_imap_gives_the_same_results(shared_pool):
    from memwise.observe.progress import track

    expected = list(range(50))
    results = shared_pool.map(_policy_tasks.index, range(50))
    assert list(track(results, shared_pool, total=50)) == expected
    results = shared_pool.imap(_policy_tasks.index, range(50))
    assert list(track(results, shared_pool, total=50)) == expected
    # Results of unknown length still work (the bar has no total).
    results = shared_pool.imap(_policy_tasks.index, range(50))
    assert list(track(results, shared_pool)) == expected
    # A sized iterable gives its own total.
    assert list(track(expected, shared_pool)) == expected


def idle(snapshot):
    return snapshot.in_flight + snapshot.queued == 0
