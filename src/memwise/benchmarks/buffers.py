"""``memwise bench buffers``: what reusing buffers saves over allocating them, in one run.

Two groups, each measured two ways: ``op_us`` takes a buffer and gives it back; ``write_us``
also fills it from a source array in between (one memcpy), which is where fresh memory pays its
page faults.

- A 480x640x3 uint8 frame: ``BufferPool`` lease/release (private and shared) against
  ``np.empty`` and ``np.zeros``.
- A 48 MB buffer: a reused shared-memory slot against a fresh segment per use (create, reserve,
  map, unlink) and a fresh private ``np.empty``.

Ratios compare within a group: the pooled figure divided by each alternative's (below 1 favours
the pool). Per-operation figures are medians of batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.console import Console

from memwise import shared
from memwise.benchmarks._harness import (
    Figures,
    Metric,
    TargetedResult,
    at_most,
    median_time,
    print_result,
    print_targets,
)
from memwise.buffers import BufferPool
from memwise.shared import SlotPool, _names, _segment
from memwise.shared._sizes import size_class

__all__ = ["METRICS", "print_table", "run"]

FRAME = (480, 640, 3)
BIG = 48_000_000

METRICS = (
    Metric("op_us", "take+give back µs", ",.1f", higher_is_better=False),
    Metric("write_us", "take+fill+give back µs", ",.1f", higher_is_better=False),
)


@dataclass(frozen=True)
class Sizes:
    frame_batch: int  # frame operations per timed sample
    frame_samples: int
    big_samples: int  # one 48 MB operation per sample


FULL = Sizes(frame_batch=200, frame_samples=15, big_samples=15)
QUICK = Sizes(frame_batch=20, frame_samples=5, big_samples=3)

Op = Callable[[bool], None]  # one take/give-back cycle; True: fill the buffer in between


def _per_op_us(op: Op, write: bool, batch: int, samples: int) -> float:
    def run_batch() -> None:
        for _ in range(batch):
            op(write)

    run_batch()  # warm up: first-touch costs are not what is measured
    return median_time(run_batch, samples) / batch * 1e6


def _figures(op: Op, batch: int, samples: int) -> Figures:
    return {
        "op_us": _per_op_us(op, False, batch, samples),
        "write_us": _per_op_us(op, True, batch, samples),
    }


def _pool_op(pool: BufferPool, source: np.ndarray) -> Op:
    def op(write: bool) -> None:
        with pool.lease() as buffer:
            if write:
                np.copyto(buffer, source)

    return op


def _numpy_op(make: Callable[..., np.ndarray], shape: tuple[int, ...], source: np.ndarray) -> Op:
    def op(write: bool) -> None:
        buffer = make(shape, np.uint8)
        if write:
            np.copyto(buffer, source)

    return op


def _slot_op(pool: SlotPool, source: np.ndarray) -> Op:
    def op(write: bool) -> None:
        slot = pool.allocate(BIG)
        if write:
            np.copyto(np.frombuffer(slot.buf, np.uint8), source)
        slot.release()

    return op


def _fresh_segment_op(source: np.ndarray) -> Op:
    size, owner = size_class(BIG), _names.current_owner()

    def op(write: bool) -> None:
        segment = _segment.create(_names.new_name(owner), size)
        try:
            if write:
                np.copyto(np.frombuffer(segment.view[:BIG], np.uint8), source)
        finally:
            _segment.unlink(segment.name)

    return op


def _frames(sizes: Sizes) -> dict[str, Figures]:
    source = np.full(FRAME, 7, np.uint8)
    batch, samples = sizes.frame_batch, sizes.frame_samples
    results = {}
    for name, is_shared in (("BufferPool", False), ("BufferPool shared", True)):
        with BufferPool(FRAME, np.uint8, size=2, shared=is_shared) as pool:
            results[name] = _figures(_pool_op(pool, source), batch, samples)
    results["np.empty"] = _figures(_numpy_op(np.empty, FRAME, source), batch, samples)
    results["np.zeros"] = _figures(_numpy_op(np.zeros, FRAME, source), batch, samples)
    return results


def _big(sizes: Sizes) -> dict[str, Figures]:
    source = np.full(BIG, 7, np.uint8)
    samples = sizes.big_samples
    with SlotPool(sweep=False) as pool:
        results = {"slot reuse 48MB": _figures(_slot_op(pool, source), 1, samples)}
    results["fresh segment 48MB"] = _figures(_fresh_segment_op(source), 1, samples)
    results["np.empty 48MB"] = _figures(_numpy_op(np.empty, (BIG,), source), 1, samples)
    return results


def _ratios(results: dict[str, Figures], subject: str, peers: list[str]) -> dict[str, Figures]:
    mine = results[subject]
    return {
        f"{subject} / {peer}": {key: mine[key] / results[peer][key] for key in mine}
        for peer in peers
    }


def run(quick: bool = False) -> TargetedResult:
    """Measure both groups in this process; ``quick`` takes fewer samples."""
    sizes = QUICK if quick else FULL
    results = {**_frames(sizes), **_big(sizes)}
    ratios = {
        **_ratios(results, "BufferPool", ["np.empty", "np.zeros"]),
        **_ratios(results, "slot reuse 48MB", ["fresh segment 48MB", "np.empty 48MB"]),
    }
    shared.trim()
    targets = {
        # A pool of buffers exists to beat allocating: a warm frame must cost less than a
        # fresh zeroed one, and a warm slot less than a fresh segment.
        "BufferPool frame / np.zeros": at_most(
            ratios["BufferPool / np.zeros"]["write_us"], 1.0, "x"
        ),
        "slot reuse / fresh segment, 48 MB": at_most(
            ratios["slot reuse 48MB / fresh segment 48MB"]["write_us"], 1.0, "x"
        ),
    }
    return {
        "benchmark": "buffers",
        "results": results,
        "skipped": {},
        "ratios": ratios,
        "targets": targets,
    }


def print_table(result: TargetedResult, console: Console | None = None) -> None:
    """Print the figures, the pooled ÷ fresh ratios (below 1 favours the pool), the targets."""
    print_result(result, METRICS, "pooled", console)
    print_targets(result["targets"], console)
