"""Pipeline over threads: order, bounded memory, back-pressure, drops, errors, stop, async."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwise.observe.stages import named, stage_rows
from memwise.pipeline import ItemError, Pipeline

WAIT = 30.0


def _pipeline_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("memwise-pipeline") and t.is_alive()
    ]


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _sleep_then(delays: list[float]):
    def stage(x: int) -> int:
        time.sleep(delays[x])
        return x

    return stage


@settings(max_examples=20, deadline=None)
@given(
    delays=st.lists(st.floats(0, 0.003), min_size=1, max_size=40),
    workers=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    capacity=st.one_of(st.none(), st.integers(1, 6)),
)
def test_order_is_kept_under_random_delays(
    delays: list[float], workers: tuple[int, int], capacity: int | None
) -> None:
    with Pipeline(range(len(delays)), capacity=capacity) as line:
        line.pipe(_sleep_then(delays), workers=workers[0])
        line.pipe(_sleep_then(list(reversed(delays))), workers=workers[1])
        assert list(line) == list(range(len(delays)))
        snapshot = line.snapshot()
    assert snapshot.state == "finished" and snapshot.drops == 0
    assert [s.done for s in snapshot.stages] == [len(delays)] * 2


class Tracked:
    """Counts how many exist: the live items the pipeline holds."""

    lock = threading.Lock()
    alive = 0
    peak = 0

    def __init__(self, n: int) -> None:
        self.n = n
        with Tracked.lock:
            Tracked.alive += 1
            Tracked.peak = max(Tracked.peak, Tracked.alive)

    def __del__(self) -> None:
        with Tracked.lock:
            Tracked.alive -= 1


def test_live_items_never_exceed_the_capacity() -> None:
    produced = []

    def source() -> Iterator[Tracked]:
        for n in range(200):
            produced.append(n)
            yield Tracked(n)

    def jitter(item: Tracked) -> Tracked:
        time.sleep(random.random() * 0.002)
        return item

    Tracked.peak = 0
    line = Pipeline(source(), capacity=5).pipe(jitter, workers=3).pipe(jitter, workers=2)
    delivered = 0
    with line:
        for item in line:
            assert item.n == delivered
            assert len(produced) - delivered <= 5  # the source is never read ahead
            delivered += 1
            del item
            time.sleep(0.001)  # a consumer slower than the stages: results pile up, bounded
        assert line.snapshot().peak_in_flight == 5
    assert delivered == 200
    assert Tracked.peak <= 5 + 1  # the capacity, plus the one the consumer held


def test_push_source_back_pressure() -> None:
    gate = threading.Event()

    def held(x: int) -> int:
        gate.wait(WAIT)
        return x

    with Pipeline(capacity=2).pipe(held) as line:
        assert line.put(0, timeout=WAIT) and line.put(1, timeout=WAIT)
        assert line.put(2, timeout=0.05) is False  # full: the caller keeps the item
        gate.set()
        results = iter(line)
        assert next(results) == 0  # delivered: room for one more
        assert line.put(2, timeout=WAIT)
        line.finish()
        assert list(results) == [1, 2]
        assert line.snapshot().drops == 0


@pytest.mark.parametrize(("policy", "expected"), [("newest", [0, 1]), ("oldest", [0, 9])])
def test_drop_policies_count_every_drop(policy: str, expected: list[int]) -> None:
    gate = threading.Event()
    released: list[int] = []

    def held(x: int) -> int:
        gate.wait(WAIT)
        return x

    line = Pipeline(capacity=2, drop=policy, release=released.append)  # type: ignore[arg-type]
    with line.pipe(held):
        assert line.put(0)
        _until(lambda: line.snapshot().stages[0].running == 1, "the stage to take item 0")
        admitted = [line.put(n) for n in range(1, 10)]
        gate.set()
        line.finish()
        assert list(line) == expected
        snapshot = line.snapshot()
    assert admitted == ([True] + [False] * 8 if policy == "newest" else [True] * 9)
    assert snapshot.drops == 8 and snapshot.stages[0].drops == 8
    assert snapshot.peak_in_flight <= 2 and snapshot.in_flight == 0
    assert sorted(released) == list(range(10))  # dropped and finished items all given back


def test_error_raises_at_its_position_and_stops() -> None:
    def bad_at_five(x: int) -> int:
        if x == 5:
            raise ValueError("bad frame")
        return x

    got = []
    line = Pipeline(range(100)).pipe(bad_at_five, workers=3).pipe(lambda x: x, workers=2)
    with pytest.raises(ValueError, match="bad frame") as info:
        for x in line:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    assert "item 5" in str(getattr(info.value, "__notes__", ["item 5"]))
    assert line.snapshot().state == "stopped" and not _pipeline_threads()


def test_error_records_keep_going() -> None:
    def bad_at_five(x: int) -> int:
        if x == 5:
            raise ValueError("bad frame")
        return x * 10

    with Pipeline(range(8), errors="record").pipe(bad_at_five, workers=2, name="check") as line:
        out = list(line)
        assert line.snapshot().stages[0].errors == 1
    record = out[5]
    assert isinstance(record, ItemError) and record.index == 5 and record.stage == "check"
    assert isinstance(record.error, ValueError)
    assert out[:5] + out[6:] == [0, 10, 20, 30, 40, 60, 70]


def test_source_error_takes_its_position() -> None:
    def source() -> Iterator[int]:
        yield 0
        yield 1
        raise OSError("camera unplugged")

    out = list(Pipeline(source(), errors="record").pipe(lambda x: x + 1))
    assert out[:2] == [1, 2] and isinstance(out[2], ItemError) and out[2].stage == "source"


def test_stop_mid_stream_leaves_nothing_behind() -> None:
    released = []
    entered = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            entered.append(n)
            yield n
            n += 1

    line = Pipeline(endless(), release=released.append)
    line.pipe(lambda x: x, workers=3).pipe(lambda x: x, workers=2, capacity=4)
    with line:
        for x in line:
            if x == 20:
                break
    assert not _pipeline_threads()
    snapshot = line.snapshot()
    assert snapshot.state == "stopped"
    assert sorted(released) == list(range(snapshot.admitted))  # each admitted item, once
    assert len(entered) <= snapshot.admitted + 1  # never read far ahead of admission


def test_async_source_and_async_iteration() -> None:
    async def camera():
        for n in range(30):
            await asyncio.sleep(0)
            yield n

    async def main() -> list[int]:
        out = []
        async with Pipeline(camera()).pipe(lambda x: x * 2, workers=2) as line:
            async for x in line:
                out.append(x)
        return out

    assert asyncio.run(main()) == [2 * n for n in range(30)]
    assert not _pipeline_threads()


def test_async_source_with_sync_iteration() -> None:
    async def camera():
        for n in range(10):
            await asyncio.sleep(0)
            yield n

    with Pipeline(camera()).pipe(lambda x: x + 1) as line:
        assert list(line) == list(range(1, 11))


def test_snapshot_names_the_dashboard_reads() -> None:
    with Pipeline(range(10), name="line").pipe(lambda x: x, workers=2, name="s1") as line:
        list(line)
        data = line.snapshot().to_dict()
    stage = data["stages"][0]
    for key in ("name", "workers", "capacity", "depth", "done", "rate", "busy_percent"):
        assert key in stage
    assert stage["name"] == "s1" and stage["done"] == 10 and stage["errors"] == stage["drops"] == 0
    assert data["name"] == "line" and data["delivered"] == 10
    rows = stage_rows(named([line]))  # what the dashboard and the metrics read
    assert rows[0]["name"] == "line" and rows[0]["stages"][0]["done"] == 10


def test_misuse_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="no stage"):
        list(Pipeline(range(3)))
    with pytest.raises(ValueError, match="drop"):
        Pipeline(drop="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="put"):
        Pipeline(range(3)).pipe(abs).put(1)
    line = Pipeline(range(3)).pipe(abs)
    list(line)
    with pytest.raises(ValueError, match="already started"):
        line.pipe(abs)
