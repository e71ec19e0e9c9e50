"""Running the inspection line, serially, as a memwise pipeline or with another tool, and
measuring every way of running it the same.

Shared by ``memwise demo vision`` and ``memwise bench pipeline``. A :class:`Line` runs the
three stages on a stream of frames and yields the verdicts in frame order; it may be run again
and again on the same processes. :func:`measure` times every line the same way:

1. **Warm-up.** Rounds of frames until every process that serves a heavy stage has run at
   least one item of it (each stage function notes its process id on the item:
   :class:`Traced`). Each round ends when its last verdict is out, so nothing is in flight
   when the timed run begins. Start-up, imports and first page faults are then out of the
   window, and so is the burst a backlog of results makes once a cold process has caught up.
2. **Timed run** of fresh frames: the window opens when the first frame is created and closes
   at the last verdict. Per frame, latency runs from its creation to its verdict.

CPU time is counted over the window too, for this process and for its descendants: per
frame, it says what a line costs whatever else the machine runs, and bounds its frames/s at
(CPUs / CPU per frame). Peak memory is this process's and its descendants' private memory
plus this process's shared-memory slots, sampled every 50 ms while the timed run goes;
growth is the peak over the warm, idle line. Drops are frames that went in and gave no
verdict; an order violation is a verdict delivered after a later frame's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memwise import shared
from memwise.buffers import BufferPool
from memwise.demos._inspection import FRAME_SHAPE, Frame, Verdict, denoise, detect, fill_frame
from memwise.demos._inspection import judge as judge_regions
from memwise.memory import private_memory_of
from memwise.pipeline import Pipeline
from memwise.pipeline.stage import Submits
from memwise.pool.probe import cpu_seconds

__all__ = [
    "STAGES",
    "Clock",
    "Line",
    "LineRun",
    "MemorySampler",
    "MemwiseLine",
    "SerialLine",
    "Tagged",
    "Traced",
    "frames",
    "measure",
]

WARMUP_ROUNDS = 8  # at most: a line whose processes are still not all warm is flagged


class MemorySampler:
    """Peak of (private memory of this process and its descendants + its shared slots).

    Reading a process's private memory costs microseconds; listing the descendants costs a
    scan of every process on the machine, so it is done every ``relist`` seconds only (the
    lines measured here start no process while timed). Sampling must not steal the CPU it
    measures the line's use of: a sample of a line of five processes costs ~0.2 ms.
    """

    def __init__(self, interval: float = 0.05, relist: float = 0.5) -> None:
        self._interval = interval
        self._relist = relist
        self._stop = threading.Event()
        self._pids = self._descendants()
        self.peak = self.baseline = self.current()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    @staticmethod
    def _descendants() -> list[int]:
        import psutil

        return [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]

    @property
    def pids(self) -> list[int]:
        """This process (first) and its descendants, as last listed."""
        return self._pids

    def current(self) -> int:
        return private_memory_of(self._pids) + shared.stats().bytes

    def _run(self) -> None:
        listed = time.monotonic()
        while not self._stop.wait(self._interval):
            if time.monotonic() - listed > self._relist:
                self._pids, listed = self._descendants(), time.monotonic()
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> MemorySampler:
        self._pids = self._descendants()
        self.baseline = self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


@dataclass
class Clock:
    """When each frame was made and when its verdict came out."""

    created: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first: float = 0.0  # when the first frame was created: the window opens
    last: float = 0.0  # when the last verdict came out: the window closes
    order_violations: int = 0
    _highest: int = -1

    def made(self, index: int) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first = now
        self.created[index] = now

    def delivered(self, index: int) -> None:
        now = time.perf_counter()
        if index < self._highest:
            self.order_violations += 1
        self._highest = max(self._highest, index)
        self.latencies.append(now - self.created.pop(index))
        self.last = now


@dataclass(frozen=True)
class Tagged:
    """An item between stages, with the pid of the process that ran each stage so far."""

    value: Any
    trail: tuple[int, ...] = ()


@dataclass(frozen=True)
class Traced:
    """A stage function that notes its process on the item: how warm-up knows who has run.

    Picklable (by reference to ``fn``) and equal for equal ``fn``, as pools that keep their
    workers between runs while the function stays the same want.
    """

    fn: Callable[[Any], Any]

    def __call__(self, item: Any) -> Tagged:
        if isinstance(item, Tagged):
            return Tagged(self.fn(item.value), (*item.trail, os.getpid()))
        return Tagged(self.fn(item), (os.getpid(),))


# The line's three stages, as every line runs them.
STAGES = (Traced(denoise), Traced(detect), Traced(judge_regions))


def _fresh() -> np.ndarray:
    return np.empty(FRAME_SHAPE, np.uint8)


def frames(
    indices: Iterable[int],
    scenes: list[np.ndarray],
    clock: Clock,
    allocate: Callable[[], np.ndarray] = _fresh,
) -> Iterator[Frame]:
    """Frame ``i`` for each of ``indices``, in an array from ``allocate`` (default: fresh)."""
    for index in indices:
        pixels = allocate()
        clock.made(index)
        fill_frame(pixels, index, scenes)
        yield Frame(index, pixels)


class Line:
    """A way of running the inspection line; enter it to start its processes.

    ``serves`` is how many processes may run denoise and detect: warm-up goes on until each
    has run one of each (threads of this process: 1).
    """

    serves: tuple[int, int] = (1, 1)

    def __init__(self, scenes: list[np.ndarray], capacity: int) -> None:
        self.scenes = scenes
        self.capacity = capacity

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        """Verdicts of frames ``indices`` (made with ``clock``), tagged, in frame order."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """Figures of the last run beyond the common ones (bounds, stage statistics)."""
        return {}

    def __enter__(self) -> Line:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class SerialLine(Line):
    """The reference: every frame through all three stages in this thread."""

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        denoise_, detect_, judge_ = STAGES
        for frame in frames(indices, self.scenes, clock):
            yield judge_(detect_(denoise_(frame)))


class MemwiseLine(Line):
    """The line as a memwise :class:`Pipeline`: denoise and detect on ``pool`` (None: threads).

    Frames are leased from a shared BufferPool of ``capacity`` buffers, so they reach the
    workers as handles; ``capacity`` also bounds the items the pipeline holds. ``fuse``: detect
    runs in denoise's task (``Pipeline.pipe(fuse=True)``), one task per frame.
    """

    def __init__(
        self,
        scenes: list[np.ndarray],
        capacity: int,
        *,
        pool: Submits | None,
        workers: int = 2,
        fuse: bool = False,
    ) -> None:
        super().__init__(scenes, capacity)
        self.pool = pool
        self.workers = workers
        self.fuse = fuse
        self.serves = (workers, workers) if pool is not None else (1, 1)
        self._buffers = BufferPool(FRAME_SHAPE, np.uint8, size=capacity, shared=True)
        self._details: dict[str, Any] = {}

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        buffers = self._buffers
        source = frames(indices, self.scenes, clock, lambda: buffers.acquire(timeout=60))
        line = Pipeline(
            source, capacity=self.capacity, release=lambda frame: buffers.release(frame.pixels)
        )
        denoise_, detect_, judge_ = STAGES
        line.pipe(denoise_, pool=self.pool, workers=self.workers, name="denoise")
        if self.fuse:
            line.pipe(detect_, fuse=True, name="detect")
        else:
            line.pipe(detect_, pool=self.pool, workers=self.workers, name="detect")
        line.pipe(judge_, name="judge")
        with line:
            yield from line
            snapshot = line.snapshot()
        self._details = {
            "drops_counted": snapshot.drops,
            "peak_in_flight": snapshot.peak_in_flight,
            "buffers_peak": buffers.stats().peak_in_use,
            "capacity": self.capacity,
            "stages": [stage.to_dict() for stage in snapshot.stages],
        }

    def details(self) -> dict[str, Any]:
        return self._details

    def __exit__(self, *exc_info: object) -> None:
        self._buffers.close()


@dataclass(frozen=True)
class LineRun:
    """One measured run of a line: verdicts in delivery order and the figures."""

    verdicts: list[Verdict]
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    peak_bytes: int
    baseline_bytes: int
    drops: int
    order_violations: int
    warm: bool  # every process of every heavy stage ran an item before the window
    parent_cpu: float  # CPU seconds of this process during the window
    workers_cpu: float  # CPU seconds of its descendants during the window
    details: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        return {
            "frames_per_s": self.frames_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "peak_mib": self.peak_bytes / 2**20,
            "growth_mib": (self.peak_bytes - self.baseline_bytes) / 2**20,
            "drops": float(self.drops),
            "order_violations": float(self.order_violations),
            "parent_cpu_ms": self.parent_cpu * 1000 / max(len(self.verdicts), 1),
            "workers_cpu_ms": self.workers_cpu * 1000 / max(len(self.verdicts), 1),
            "warm": float(self.warm),
        }


def _warm_up(line: Line, first: int) -> tuple[bool, list[int]]:
    """Rounds of frames (numbered from ``first``) until every serving process has run each
    heavy stage; returns whether that happened and how many processes ran each stage."""
    seen: tuple[set[int], set[int]] = (set(), set())
    size = max(4, 2 * max(line.serves))
    for round_ in range(WARMUP_ROUNDS):
        start = first + round_ * size
        for result in line.run(range(start, start + size), Clock()):
            seen[0].add(result.trail[0])
            seen[1].add(result.trail[1])
        if all(len(pids) >= n for pids, n in zip(seen, line.serves, strict=True)):
            return True, [len(pids) for pids in seen]
    return False, [len(pids) for pids in seen]


def measure(line: Line, count: int, on_result: Callable[[Verdict], None] | None = None) -> LineRun:
    """Warm ``line`` up, then time it on frames ``0 .. count-1`` (see the module's doc)."""
    with line:
        warm, warmed = _warm_up(line, first=count)
        clock = Clock()
        verdicts: list[Verdict] = []
        ran_by: tuple[set[int], set[int]] = (set(), set())
        with MemorySampler() as memory:
            before = _cpu(memory.pids)
            for result in line.run(range(count), clock):
                verdict = result.value
                clock.delivered(verdict.index)
                verdicts.append(verdict)
                ran_by[0].add(result.trail[0])
                ran_by[1].add(result.trail[1])
                if on_result is not None:
                    on_result(verdict)
            after = _cpu(memory.pids)
        details = line.details()
        used = {pid: after[pid] - before[pid] for pid in before.keys() & after.keys()}
        parent_cpu = used.pop(os.getpid(), 0.0)
    latencies = np.asarray(clock.latencies or [0.0]) * 1000
    seconds = max(clock.last - clock.first, 1e-9)
    details.update(
        warmed_processes=warmed, timed_processes=[len(ran_by[0]), len(ran_by[1])], frames=count
    )
    return LineRun(
        verdicts=verdicts,
        frames_per_s=len(verdicts) / seconds,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        peak_bytes=memory.peak,
        baseline_bytes=memory.baseline,
        drops=count - len(verdicts),
        order_violations=clock.order_violations,
        warm=warm,
        parent_cpu=parent_cpu,
        workers_cpu=sum(used.values()),
        details=details,
    )


def _cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` still alive."""
    seconds = {}
    for pid in pids:
        try:
            seconds[pid] = cpu_seconds(pid)
        except ProcessLookupError:
            continue
    return seconds
