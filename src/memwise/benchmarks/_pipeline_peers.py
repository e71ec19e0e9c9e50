"""The inspection line as users build it with other tools, measured like memwise's.

Each peer is a :class:`~memwise.demos._lines.Line`: it starts its processes once, on entry,
and runs the same three stages on the same frames each time it is asked, so that
:func:`~memwise.demos._lines.measure` warms every process up before timing fresh frames.
Workers: ``PROCESSES`` in all, two per heavy stage, or one pool of four shared by both where
the tool allows sharing; the cheap verdict runs in this process (in its own process for the
hand-written chain, as such chains are written). Queues are bounded by the same capacity where
the tool has such a bound. Frames are fresh arrays: these tools pickle frames through pipes.

Also here: :func:`parallel_bound`, no pipeline at all but the serial loop in one process per
CPU on its own share of the frames: what this machine can do at best, right now.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from memwise.demos._inspection import Verdict, inspect, load_scenes, warm_up
from memwise.demos._lines import STAGES, Clock, Line, Tagged, frames

__all__ = ["PEERS", "PROCESSES", "Bound", "parallel_bound"]

PROCESSES = 4  # worker processes per system: equal CPU share on a machine others also use
_HALF = PROCESSES // 2


def _in_order(results: Iterator[Tagged], indices: range) -> Iterator[Tagged]:
    """``results`` (of frames ``indices``, in any order) in frame order; early ones wait."""
    early: dict[int, Tagged] = {}
    for expected in indices:
        while expected not in early:
            result = next(results)
            early[result.value.index] = result
        yield early.pop(expected)


def _fed(put: Any, made: Iterator[Any]) -> threading.Thread:
    """A thread putting each of ``made`` with ``put`` (which waits while the line is full)."""

    def feed() -> None:
        for item in made:
            put(item)

    feeder = threading.Thread(target=feed, name="peer-feeder", daemon=True)
    feeder.start()
    return feeder


# -------------------------------------------------------------------- multiprocessing.Queue


def _queue_worker(fn: Any, inbox: Any, outbox: Any) -> None:
    while (item := inbox.get()) is not None:
        outbox.put(fn(item))


class QueueChain(Line):
    """A hand-written chain: processes joined by bounded ``multiprocessing.Queue`` s."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> QueueChain:
        context = multiprocessing.get_context("forkserver")
        self._counts = (_HALF, _HALF, 1)
        self._queues = [context.Queue(self.capacity) for _ in range(len(STAGES) + 1)]
        self._workers = [
            context.Process(
                target=_queue_worker, args=(fn, self._queues[i], self._queues[i + 1]), daemon=True
            )
            for i, (fn, n) in enumerate(zip(STAGES, self._counts, strict=True))
            for _ in range(n)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        feeder = _fed(self._queues[0].put, frames(indices, self.scenes, clock))
        outbox = self._queues[-1]
        yield from _in_order(iter(outbox.get, None), indices)
        feeder.join()

    def __exit__(self, *exc_info: object) -> None:
        for i, n in enumerate(self._counts):  # one end mark per worker reading queue i
            for _ in range(n):
                self._queues[i].put(None)
        for worker in self._workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for channel in self._queues:
            channel.close()
            channel.join_thread()


# -------------------------------------------------------------------- pypeln


class Pypeln(Line):
    """``pypeln.process.map`` stages fed from a queue, unordered (its ordered mode collects
    every item first): one stream kept open across runs, so its processes stay warm."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> Pypeln:
        try:
            import pypeln as pl
        except ModuleNotFoundError as exc:
            if exc.name != "pkg_resources":
                raise
            raise ImportError(
                "pypeln imports stopit, which imports pkg_resources; that module comes with "
                "setuptools, which this environment does not install"
            ) from exc

        # pypeln reads a plain iterable in a thread of this process, and only stops at its end.
        self._inbox: queue.Queue[Any] = queue.Queue(self.capacity)
        stage = pl.process.map(
            STAGES[0], iter(self._inbox.get, None), workers=_HALF, maxsize=self.capacity
        )
        stage = pl.process.map(STAGES[1], stage, workers=_HALF, maxsize=self.capacity)
        self._regions = iter(stage)
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        feeder = _fed(self._inbox.put, frames(indices, self.scenes, clock))
        yield from _in_order((STAGES[2](regions) for regions in self._regions), indices)
        feeder.join()

    def __exit__(self, *exc_info: object) -> None:
        self._inbox.put(None)
        for _ in self._regions:  # the end of the stream ends its processes
            pass


# -------------------------------------------------------------------- mpire


class Mpire(Line):
    """Two ``mpire.WorkerPool`` s chained by ``imap`` (ordered), the verdict in this process;
    ``keep_alive``: the workers stay up between runs."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> Mpire:
        import mpire

        self._stack = contextlib.ExitStack()
        self._first, self._second = (
            self._stack.enter_context(
                mpire.WorkerPool(_HALF, start_method="forkserver", keep_alive=True)
            )
            for _ in range(2)
        )
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        # mpire unpacks tuple items into arguments: wrap each item in a 1-tuple.
        made = ((frame,) for frame in frames(indices, self.scenes, clock))
        masks = self._first.imap(STAGES[0], made, chunk_size=1, max_tasks_active=self.capacity)
        regions = self._second.imap(
            STAGES[1], ((mask,) for mask in masks), chunk_size=1, max_tasks_active=self.capacity
        )
        for result in regions:
            yield STAGES[2](result)

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


# -------------------------------------------------------------------- spdl


class Spdl(Line):
    """spdl's ``PipelineBuilder``, denoise and detect on one process executor, input order."""

    serves = (PROCESSES, PROCESSES)

    def __enter__(self) -> Spdl:
        context = multiprocessing.get_context("forkserver")
        self._executor = ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=warm_up)
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        from spdl.pipeline import PipelineBuilder

        builder: Any = PipelineBuilder()  # its generics cannot follow a chain of stages
        pipeline = (
            builder.add_source(frames(indices, self.scenes, clock))
            .pipe(STAGES[0], concurrency=PROCESSES, executor=self._executor, output_order="input")
            .pipe(STAGES[1], concurrency=PROCESSES, executor=self._executor, output_order="input")
            .pipe(STAGES[2])
            .add_sink(self.capacity)
            .build(num_threads=4)
        )
        with pipeline.auto_stop():
            yield from pipeline.get_iterator(timeout=600)

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(cancel_futures=True)


PEERS: dict[str, type[Line]] = {
    "multiprocessing.Queue chain": QueueChain,
    "pypeln processes": Pypeln,
    "mpire chained imap": Mpire,
    "spdl process executor": Spdl,
}


# -------------------------------------------------------------------- the machine's bound

_scenes: list[np.ndarray] = []


def _load_scenes() -> None:
    _scenes[:] = load_scenes()
    warm_up()


def _serial_share(indices: range) -> tuple[int, float, list[Verdict]]:
    """This process's pid, the CPU seconds it took, and the verdicts of frames ``indices``."""
    start = time.process_time()
    verdicts = [inspect(frame) for frame in frames(indices, _scenes, Clock())]
    return os.getpid(), time.process_time() - start, verdicts


@dataclass(frozen=True)
class Bound:
    """What the serial loop does on every CPU at once, with nothing between the processes."""

    frames_per_s: float
    cpu_ms: float  # CPU per frame: above serial's alone when the CPUs slow each other down
    warm: bool  # every process had run a frame before the timed run
    verdicts: list[Verdict]


def parallel_bound(count: int, cpus: int) -> Bound:
    """``cpus`` processes, each running the serial loop on its share of ``count`` frames.

    No hand-over, no order, no parent in the way: no pipeline on these CPUs can beat it. Each
    process first runs a warm-up frame (repeated until every process has).
    """
    context = multiprocessing.get_context("forkserver")
    shares = [range(k, count, cpus) for k in range(cpus)]
    with ProcessPoolExecutor(cpus, mp_context=context, initializer=_load_scenes) as executor:
        warmed: set[int] = set()
        for round_ in range(8):
            first = count + round_ * cpus
            warm = [
                executor.submit(_serial_share, range(n, n + 1)) for n in range(first, first + cpus)
            ]
            warmed.update(future.result()[0] for future in warm)
            if len(warmed) == cpus:
                break
        start = time.perf_counter()
        futures = [executor.submit(_serial_share, share) for share in shares]
        results = [future.result() for future in futures]
        seconds = time.perf_counter() - start
    verdicts = sorted((v for _, _, share in results for v in share), key=lambda v: v.index)
    cpu = sum(used for _, used, _ in results)
    return Bound(count / seconds, cpu * 1000 / count, len(warmed) == cpus, verdicts)
