"""The inspection line as users build it with other tools, measured like memwise's.

Each peer runs the same three stages on the same frames with the same number of worker
processes (``PROCESSES``: two per heavy stage, or one pool of four shared by both where the
tool allows sharing; the cheap verdict runs in this process), queues bounded by the same
capacity where it has such a bound, and reports through the same
:class:`~memwise.demos._lines.Clock` and :class:`~memwise.demos._lines.MemorySampler`.
Frames are fresh arrays here: these tools pickle frames through pipes anyway.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from memwise.demos._inspection import Verdict, denoise, detect, judge, warm_up
from memwise.demos._lines import Clock, LineRun, MemorySampler, finish_run, plain_frames

__all__ = ["PEERS", "PROCESSES"]

PROCESSES = 4  # worker processes per system: equal CPU share on a machine others also use

Peer = Callable[[int, list[np.ndarray], int, int], LineRun]


def _collect(clock: Clock, results: Iterator[Verdict]) -> list[Verdict]:
    verdicts = []
    for verdict in results:
        clock.delivered(verdict.index)
        verdicts.append(verdict)
    return verdicts


# -------------------------------------------------------------------- multiprocessing.Queue


def _queue_worker(fn: Callable[[Any], Any], inbox: Any, outbox: Any) -> None:
    while (item := inbox.get()) is not None:
        outbox.put(fn(item))


def _reordered(outbox: Any, count: int) -> Iterator[Verdict]:
    """The chain's results in frame order (a dict holds those that came early)."""
    early: dict[int, Verdict] = {}
    for expected in range(count):
        while expected not in early:
            verdict = outbox.get()
            early[verdict.index] = verdict
        yield early.pop(expected)


def queue_chain(count: int, scenes: list[np.ndarray], capacity: int, warmup: int) -> LineRun:
    """A hand-written chain: processes joined by bounded ``multiprocessing.Queue`` s.

    The verdict gets a process of its own too: that is how such a chain is written.
    """
    context = multiprocessing.get_context("forkserver")
    stages = ((denoise, PROCESSES // 2), (detect, PROCESSES // 2), (judge, 1))
    queues = [context.Queue(capacity) for _ in range(len(stages) + 1)]
    workers = [
        context.Process(target=_queue_worker, args=(fn, queues[i], queues[i + 1]), daemon=True)
        for i, (fn, n) in enumerate(stages)
        for _ in range(n)
    ]
    for worker in workers:
        worker.start()
    clock = Clock(warmup)

    def feed() -> None:
        for frame in plain_frames(count, scenes, clock):
            queues[0].put(frame)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        with MemorySampler() as memory:
            feeder.start()
            verdicts = _collect(clock, _reordered(queues[-1], count))
    finally:
        feeder.join()
        for i, (_, n) in enumerate(stages):
            for _ in range(n):
                queues[i].put(None)
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for queue in queues:
            queue.close()
            queue.join_thread()
    return finish_run(clock, verdicts, count, memory)


# -------------------------------------------------------------------- pypeln


def pypeln_processes(count: int, scenes: list[np.ndarray], capacity: int, warmup: int) -> LineRun:
    """``pypeln.process.map`` stages; unordered (its ordered mode collects every item first)."""
    import pypeln as pl

    clock = Clock(warmup)
    with MemorySampler() as memory:
        frames = plain_frames(count, scenes, clock)
        half = PROCESSES // 2
        stage = pl.process.map(denoise, frames, workers=half, maxsize=capacity)
        stage = pl.process.map(detect, stage, workers=half, maxsize=capacity)
        verdicts = _collect(clock, (judge(regions) for regions in stage))
    return finish_run(clock, verdicts, count, memory)


# -------------------------------------------------------------------- mpire


def mpire_imap(count: int, scenes: list[np.ndarray], capacity: int, warmup: int) -> LineRun:
    """Two ``mpire.WorkerPool`` s chained by ``imap`` (ordered), the verdict in this process."""
    import mpire

    clock = Clock(warmup)
    with (
        mpire.WorkerPool(PROCESSES // 2, start_method="forkserver") as first,
        mpire.WorkerPool(PROCESSES // 2, start_method="forkserver") as second,
        MemorySampler() as memory,
    ):
        # mpire unpacks tuple items into arguments: wrap each item in a 1-tuple.
        frames = ((frame,) for frame in plain_frames(count, scenes, clock))
        masks = first.imap(denoise, frames, chunk_size=1, max_tasks_active=capacity)
        regions = second.imap(
            detect, ((mask,) for mask in masks), chunk_size=1, max_tasks_active=capacity
        )
        verdicts = _collect(clock, (judge(r) for r in regions))
    return finish_run(clock, verdicts, count, memory)


# -------------------------------------------------------------------- spdl


def spdl_processes(count: int, scenes: list[np.ndarray], capacity: int, warmup: int) -> LineRun:
    """spdl's ``PipelineBuilder`` with a process executor for denoise and detect, input order."""
    from spdl.pipeline import PipelineBuilder

    clock = Clock(warmup)
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=warm_up) as executor:
        builder: Any = PipelineBuilder()  # its generics cannot follow a chain of stages
        pipeline = (
            builder.add_source(plain_frames(count, scenes, clock))
            .pipe(denoise, concurrency=PROCESSES, executor=executor, output_order="input")
            .pipe(detect, concurrency=PROCESSES, executor=executor, output_order="input")
            .pipe(judge)
            .add_sink(capacity)
            .build(num_threads=4)
        )
        with MemorySampler() as memory, pipeline.auto_stop():
            verdicts = _collect(clock, iter(pipeline.get_iterator(timeout=600)))
    return finish_run(clock, verdicts, count, memory)


PEERS: dict[str, Peer] = {
    "multiprocessing.Queue chain": queue_chain,
    "pypeln processes": pypeln_processes,
    "mpire chained imap": mpire_imap,
    "spdl process executor": spdl_processes,
}
