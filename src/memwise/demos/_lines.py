"""Running the inspection line serially or as a memwise pipeline, with the same measurements.

Shared by ``memwise demo vision`` and ``memwise bench pipeline``: frames/s, per-frame latency
(from the frame's creation to its verdict), peak memory (this process's and its workers'
private memory plus this process's shared-memory slots, sampled while the line runs), drops and
order violations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memwise import shared
from memwise.buffers import BufferPool
from memwise.demos._inspection import FRAME_SHAPE, Frame, Verdict, denoise, detect, fill_frame
from memwise.demos._inspection import inspect as inspect_frame
from memwise.demos._inspection import judge as judge_regions
from memwise.memory import total_private, usage_tree
from memwise.pipeline import Pipeline
from memwise.pipeline.stage import Submits

__all__ = ["Clock", "LineRun", "MemorySampler", "run_pipeline", "run_serial"]


class MemorySampler:
    """Peak of (private memory of this process and its descendants + its shared slots)."""

    def __init__(self, interval: float = 0.02) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.baseline = self.current()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    @staticmethod
    def current() -> int:
        return total_private(usage_tree(pss=False)) + shared.stats().bytes

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> MemorySampler:
        self.baseline = self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


@dataclass
class Clock:
    """When each frame was made and when its result came out; ``warmup`` results not timed."""

    warmup: int
    created: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first: float = 0.0  # when the last warm-up result came out
    last: float = 0.0
    order_violations: int = 0
    _highest: int = -1

    def made(self, index: int) -> None:
        self.created[index] = time.perf_counter()
        if index == 0 and self.warmup == 0:
            self.first = self.created[index]

    def delivered(self, index: int) -> None:
        now = time.perf_counter()
        if index < self._highest:
            self.order_violations += 1
        self._highest = max(self._highest, index)
        created = self.created.pop(index)
        if index >= self.warmup:
            self.latencies.append(now - created)
        if index == self.warmup - 1:
            self.first = now
        self.last = now


@dataclass(frozen=True)
class LineRun:
    """One run of the line: verdicts in delivery order and the figures."""

    verdicts: list[Verdict]
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    peak_bytes: int
    baseline_bytes: int
    drops: int
    order_violations: int
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
        }


def finish_run(
    clock: Clock,
    verdicts: list[Verdict],
    expected: int,
    memory: MemorySampler,
    **details: Any,
) -> LineRun:
    """The figures of a run whose results are ``verdicts`` (peers use it too)."""
    timed = len(verdicts) - clock.warmup
    seconds = max(clock.last - clock.first, 1e-9)
    latencies = np.asarray(clock.latencies or [0.0]) * 1000
    return LineRun(
        verdicts=verdicts,
        frames_per_s=timed / seconds if timed > 0 else 0.0,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        peak_bytes=memory.peak,
        baseline_bytes=memory.baseline,
        drops=expected - len(verdicts),
        order_violations=clock.order_violations,
        details=details,
    )


def plain_frames(count: int, scenes: list[np.ndarray], clock: Clock) -> Iterator[Frame]:
    """Frames in fresh arrays (for systems that copy frames anyway)."""
    for index in range(count):
        pixels = np.empty(FRAME_SHAPE, np.uint8)
        clock.made(index)
        fill_frame(pixels, index, scenes)
        yield Frame(index, pixels)


def leased_frames(
    count: int, scenes: list[np.ndarray], clock: Clock, buffers: BufferPool
) -> Iterator[Frame]:
    """Frames in buffers leased from ``buffers``: released by the line when it is done."""
    for index in range(count):
        pixels = buffers.acquire(timeout=60)
        clock.made(index)
        fill_frame(pixels, index, scenes)
        yield Frame(index, pixels)


def run_serial(count: int, scenes: list[np.ndarray], warmup: int = 2) -> LineRun:
    """The reference: every frame through all three stages in this thread."""
    clock = Clock(warmup)
    with MemorySampler() as memory:
        verdicts = []
        for frame in plain_frames(count, scenes, clock):
            verdict = inspect_frame(frame)
            clock.delivered(verdict.index)
            verdicts.append(verdict)
    return finish_run(clock, verdicts, count, memory)


def run_pipeline(
    count: int,
    scenes: list[np.ndarray],
    *,
    pool: Submits | None,
    workers: int = 2,
    capacity: int = 8,
    warmup: int = 2,
    on_result: Callable[[Verdict], None] | None = None,
) -> LineRun:
    """The line as a memwise Pipeline: denoise and detect on ``pool`` (None: threads).

    Frames are leased from a shared BufferPool of ``capacity`` buffers, so they reach the
    workers as handles; ``capacity`` also bounds the items the pipeline holds.
    """
    clock = Clock(warmup)
    with BufferPool(FRAME_SHAPE, np.uint8, size=capacity, shared=True) as buffers:
        source: Iterable[Frame] = leased_frames(count, scenes, clock, buffers)
        line = Pipeline(
            source, capacity=capacity, release=lambda frame: buffers.release(frame.pixels)
        )
        line.pipe(denoise, pool=pool, workers=workers)
        line.pipe(detect, pool=pool, workers=workers)
        line.pipe(judge_regions)
        with MemorySampler() as memory, line:
            verdicts = []
            for verdict in line:
                clock.delivered(verdict.index)
                verdicts.append(verdict)
                if on_result is not None:
                    on_result(verdict)
            snapshot = line.snapshot()
        buffers_peak = buffers.stats().peak_in_use
    return finish_run(
        clock,
        verdicts,
        count,
        memory,
        drops_counted=snapshot.drops,
        peak_in_flight=snapshot.peak_in_flight,
        buffers_peak=buffers_peak,
        capacity=capacity,
        stages=[stage.to_dict() for stage in snapshot.stages],
    )
