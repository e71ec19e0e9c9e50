"""``memwise bench pipeline``: the 3-stage inspection line, memwise against its peers, one run.

The workload is ``memwise demo vision``'s: 480x640 frames of the scikit-image photographs with
injected defects; denoise/threshold, detection with ``skimage.measure``, verdict. Systems:

- serial: the three stages in a row, in this thread;
- memwise threads / memwise processes: a ``Pipeline`` with frames leased from a shared
  ``BufferPool`` (handles, not copies, to the workers); two threads per heavy stage, or both
  heavy stages sharing one ``WorkerPool`` of ``PROCESSES`` processes;
- a hand-written ``multiprocessing.Queue`` chain, pypeln process stages, chained mpire
  ``imap``, spdl with a process executor (each skipped, with the reason, if it does not run).

Per system: frames/s in steady state (after ``warmup`` results), p50/p99 latency from a frame's
creation to its verdict, peak memory (private memory of this process and its workers plus this
process's shared-memory slots, sampled every 20 ms), growth of that over the idle system, drops
and order violations (results delivered after a later frame's).

The memory bound is stated from the capacities: at most ``capacity`` frames are in the line,
and each needs at most its frame plus the temporaries of one pass through the stages (measured
here with tracemalloc over a serial pass), so growth must stay within ``capacity`` times that.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from memwise.benchmarks._harness import (
    BenchResult,
    Figures,
    Metric,
    measure_systems,
    print_result,
    ratios_against,
)
from memwise.benchmarks._pipeline_peers import PEERS, PROCESSES
from memwise.demos._inspection import FRAME_SHAPE, Frame, fill_frame, inspect, warm_up
from memwise.demos._lines import LineRun, run_pipeline, run_serial
from memwise.pool.api import WorkerPool

__all__ = ["METRICS", "print_table", "run"]

SUBJECT = "memwise processes"
CAPACITY = 8
SHM_THRESHOLD = "256 KiB"  # 480x640x3 frames (900 KiB) go through shared-memory slots
MIN_SPEEDUP_SERIAL = 1.8
MIN_SPEEDUP_PEER = 1.2
MiB = 2**20

METRICS = (
    Metric("frames_per_s", "frames/s", ",.1f"),
    Metric("p50_ms", "p50 ms", ",.0f", higher_is_better=False),
    Metric("p99_ms", "p99 ms", ",.0f", higher_is_better=False),
    Metric("peak_mib", "peak MiB", ",.0f", higher_is_better=False),
    Metric("growth_mib", "growth MiB", ",.0f", higher_is_better=False),
    Metric("drops", "drops", ",.0f", higher_is_better=False),
    Metric("order_violations", "order violations", ",.0f", higher_is_better=False),
)


@dataclass(frozen=True)
class Sizes:
    frames: int
    warmup: int


FULL = Sizes(frames=120, warmup=6)
QUICK = Sizes(frames=24, warmup=4)


class PipelineResult(BenchResult):
    """Adds ``targets``: what the issue asks of memwise processes, from this same run."""

    targets: dict[str, dict[str, Any]]
    bound: dict[str, float]


def _item_bytes(scenes: list[Any]) -> int:
    """A frame plus the peak of what one pass through the three stages allocates (traced)."""
    import tracemalloc

    import numpy as np

    pixels = np.empty(FRAME_SHAPE, np.uint8)
    fill_frame(pixels, 1, scenes)
    inspect(Frame(1, pixels))  # imports and caches are not per item
    tracemalloc.start()
    try:
        inspect(Frame(1, pixels))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return pixels.nbytes + peak


def _memwise_processes(sizes: Sizes, scenes: list[Any]) -> LineRun:
    # One pool for both heavy stages: whichever is the bottleneck may use every process.
    with WorkerPool(PROCESSES, initializer=warm_up, shm_threshold=SHM_THRESHOLD) as pool:
        return run_pipeline(
            sizes.frames,
            scenes,
            pool=pool,
            workers=PROCESSES,
            capacity=CAPACITY,
            warmup=sizes.warmup,
        )


def _systems(sizes: Sizes, scenes: list[Any], checked: dict[str, LineRun]) -> dict[str, Any]:
    def measured(run_line: Callable[[], LineRun], name: str) -> Callable[[], Figures]:
        def measure() -> Figures:
            line = run_line()
            checked[name] = line
            return line.figures()

        return measure

    systems = {
        "serial": measured(lambda: run_serial(sizes.frames, scenes, sizes.warmup), "serial"),
        "memwise threads": measured(
            lambda: run_pipeline(
                sizes.frames, scenes, pool=None, capacity=CAPACITY, warmup=sizes.warmup
            ),
            "memwise threads",
        ),
        SUBJECT: measured(lambda: _memwise_processes(sizes, scenes), SUBJECT),
    }
    for name, peer in PEERS.items():
        systems[name] = measured(
            functools.partial(peer, sizes.frames, scenes, CAPACITY, sizes.warmup), name
        )
    return systems


def _target(value: float, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    met = value >= limit if op == ">=" else value <= limit
    return {"value": round(value, 3), "target": f"{op} {limit:g}{unit}", "met": bool(met)}


def _targets(
    results: dict[str, Figures], checked: dict[str, LineRun], bound_mib: float
) -> dict[str, dict[str, Any]]:
    if SUBJECT not in results or "serial" not in results:
        return {}
    mine = results[SUBJECT]
    peers = [
        figures["frames_per_s"]
        for name, figures in results.items()
        if name in PEERS and figures["drops"] == 0
    ]
    line = checked[SUBJECT]
    reference = checked["serial"].verdicts
    targets = {
        "memwise processes ÷ serial, frames/s": _target(
            mine["frames_per_s"] / results["serial"]["frames_per_s"], ">=", MIN_SPEEDUP_SERIAL, "x"
        ),
        "memory growth (MiB) within the capacity bound": _target(
            mine["growth_mib"], "<=", round(bound_mib, 1), " MiB"
        ),
        "frames in flight within the capacity": _target(
            float(line.details["peak_in_flight"]), "<=", float(CAPACITY)
        ),
        "drops": _target(mine["drops"], "<=", 0),
        "order violations": _target(mine["order_violations"], "<=", 0),
        "verdicts equal serial's": _target(float(line.verdicts == reference), ">=", 1),
    }
    if peers:
        targets["memwise processes ÷ best peer, frames/s"] = _target(
            mine["frames_per_s"] / max(peers), ">=", MIN_SPEEDUP_PEER, "x"
        )
    return targets


def run(quick: bool = False) -> PipelineResult:
    """Every system on the same frames, one after the other in this process."""
    from memwise.demos._inspection import load_scenes

    sizes = QUICK if quick else FULL
    scenes = load_scenes()
    item_mib = _item_bytes(scenes) / MiB
    checked: dict[str, LineRun] = {}
    results, skipped = measure_systems(_systems(sizes, scenes, checked))
    bound_mib = CAPACITY * item_mib
    return {
        "benchmark": "pipeline",
        "results": results,
        "skipped": skipped,
        "ratios": ratios_against(results, SUBJECT, METRICS[:4]),
        "targets": _targets(results, checked, bound_mib),
        "bound": {
            "capacity": CAPACITY,
            "item_mib": round(item_mib, 2),
            "bound_mib": round(bound_mib, 1),
            "cpus": float(len(os.sched_getaffinity(0))),
        },
    }


def print_table(result: PipelineResult, console: Console | None = None) -> None:
    """The figures, memwise processes ÷ each system, then the targets."""
    console = console or Console()
    print_result(result, METRICS, SUBJECT, console)
    bound = result["bound"]
    console.print(
        f"memory bound: capacity {bound['capacity']:.0f} x {bound['item_mib']} MiB per item "
        f"(frame + one pass's temporaries) = {bound['bound_mib']} MiB"
    )
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"{mark} {name}: {target['value']:,} (target {target['target']})")
