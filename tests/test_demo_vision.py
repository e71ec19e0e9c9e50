"""The vision line's measurement: warm every process, drain, then time fresh frames."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memwise import WorkerPool
from memwise.benchmarks._pipeline_peers import QueueChain
from memwise.demos._inspection import Verdict, load_scenes, warm_up
from memwise.demos._lines import (
    WARMUP_ROUNDS,
    Clock,
    Line,
    MemwiseLine,
    SerialLine,
    Tagged,
    measure,
)

pytestmark = pytest.mark.timeout(180)


class Recording(Line):
    """A line whose 'processes' are named by the frame index: ``i % processes``."""

    def __init__(self, serves: tuple[int, int], processes: int) -> None:
        super().__init__([], capacity=4)
        self.serves = serves
        self.processes = processes
        self.started: list[range] = []
        self.finished: list[range] = []

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        self.started.append(indices)
        for index in indices:
            clock.made(index)
            worker = index % self.processes
            yield Tagged(Verdict(index, True, 0, 0), (100 + worker, 200 + worker, 1))
        self.finished.append(indices)  # only reached if the consumer took every result


def test_warm_up_reaches_every_process_and_drains_before_the_timed_run() -> None:
    line = Recording(serves=(3, 3), processes=3)
    run = measure(line, 10)
    assert run.warm and run.figures()["warm"] == 1.0
    assert run.details["warmed_processes"] == [3, 3]
    timed = line.started[-1]
    assert timed == range(10)  # fresh frames: none was seen during warm-up
    warm_up_runs = line.started[:-1]
    assert warm_up_runs and all(r.start >= 10 for r in warm_up_runs)
    assert line.finished[:-1] == warm_up_runs  # each drained before the next began
    assert [v.index for v in run.verdicts] == list(range(10))
    assert run.drops == 0 and run.order_violations == 0


def test_a_line_whose_processes_never_all_run_is_flagged_not_warm() -> None:
    line = Recording(serves=(3, 3), processes=2)
    run = measure(line, 4)
    assert not run.warm and run.figures()["warm"] == 0.0
    assert run.details["warmed_processes"] == [2, 2]
    assert len(line.started) == WARMUP_ROUNDS + 1


def test_pipelines_on_processes_give_the_serial_verdicts_in_order() -> None:
    scenes = load_scenes()
    count = 6
    serial = measure(SerialLine(scenes, 4), count)
    with WorkerPool(2, initializer=warm_up, shm_threshold="256 KiB") as pool:
        memwise = measure(MemwiseLine(scenes, 4, pool=pool), count)
    chain = measure(QueueChain(scenes, 4), count)
    for run in (memwise, chain):
        assert run.verdicts == serial.verdicts
        assert run.warm and run.details["warmed_processes"] == [2, 2]
        assert run.drops == 0 and run.order_violations == 0
        assert run.workers_cpu > 0  # the heavy stages ran in the workers
    assert memwise.details["peak_in_flight"] <= 4
