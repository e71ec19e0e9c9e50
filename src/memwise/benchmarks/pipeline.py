"""``memwise bench pipeline``: the 3-stage inspection line, memwise against its peers, one run.

The workload is ``memwise demo vision``'s: 480x640 frames of the scikit-image photographs with
injected defects; denoise/threshold, detection with ``skimage.measure``, verdict. Systems:

- serial: the three stages in a row, in this thread;
- memwise threads / memwise processes: a ``Pipeline`` with frames leased from a shared
  ``BufferPool`` (handles, not copies, to the workers); two threads per heavy stage, or both
  heavy stages sharing one ``WorkerPool`` of ``PROCESSES`` processes; and the same with
  detect fused into denoise's task (``pipe(fuse=True)``: one task per frame), shown apart
  and not used for the targets, since a peer's user could compose the functions too;
- a hand-written ``multiprocessing.Queue`` chain, pypeln process stages, chained mpire
  ``imap``, spdl with a process executor (each skipped, with the reason, if it does not run).

Every system is timed the same way (:func:`memwise.demos._lines.measure`): warm-up rounds until
every process of every heavy stage has run an item, drained, then fresh frames timed from the
first frame's creation to the last verdict. Per system: frames/s, p50/p99 latency from a
frame's creation to its verdict, peak memory (private memory of this process and its workers
plus this process's shared-memory slots, sampled every 50 ms), growth of that over the warm,
idle system, CPU time per frame (this process; its workers) and what that allows on this
machine's CPUs if the system had them to itself (serial: one CPU), drops and order
violations (results delivered after a later frame's). Every system is measured in turn, in
``rounds`` rounds: each keeps its fastest run (all its figures are that run's) and reports
the spread of its frames/s over the rounds.

The machine's bound is measured too: the serial loop in one process per CPU, each on its
share of the frames (no pipeline, no parent in the way), timed in turn with the same loop in
one process, a pair before the first round and after each (``rounds + 1`` pairs, each in
warm processes of its own); the best of each and their spread are reported, with the CPU per
frame of each (when the CPUs slow each other down, the bound is below the CPU count).
Each system's frames/s is also given as a fraction of the bound. Sanity: a system faster than
serial on every CPU, or than the bound, is flagged, and so is any not fully warm when timed.

Every process that runs frames (this one included) starts with
:func:`~memwise.demos._inspection.warm_up`, whose warm heap spares each frame ~2,000 page
faults: all systems and the bound run in the same conditions.

The memory bound is stated from the capacities: at most ``capacity`` frames are in the line,
and each needs at most its frame plus the temporaries of one pass through the stages (measured
here with tracemalloc over a serial pass), so growth must stay within ``capacity`` times that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from memwise.benchmarks._harness import (
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_least,
    at_most,
    exactly,
    measure_systems,
    print_result,
    print_targets,
    ratios_against,
)
from memwise.benchmarks._pipeline_peers import PEERS, PROCESSES, MachineBound
from memwise.demos._inspection import FRAME_SHAPE, Frame, fill_frame, inspect, warm_up
from memwise.demos._lines import Line, LineRun, MemwiseLine, SerialLine, measure
from memwise.pool.api import WorkerPool

__all__ = ["METRICS", "print_table", "run"]

SUBJECT = "memwise processes"
FUSED = "memwise processes, fused"  # detect in denoise's task: not counted for the targets
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
    Metric("parent_cpu_ms", "parent CPU ms/frame", ",.1f", higher_is_better=False),
    Metric("workers_cpu_ms", "workers CPU ms/frame", ",.1f", higher_is_better=False),
    Metric("cpu_limit_fps", "CPU-bound frames/s", ",.1f"),
    Metric("of_bound", "of machine bound", ".0%"),
    Metric("spread", "spread", ".0%", higher_is_better=False),
    Metric("drops", "drops", ",.0f", higher_is_better=False),
    Metric("order_violations", "order violations", ",.0f", higher_is_better=False),
)


MIN_OF_BOUND = 0.9  # a target of this benchmark's own, beyond the issue's: see _targets
BUSY_SHARE = 0.9  # of the CPUs, below which the bound's best parallel pass was crowded out


@dataclass(frozen=True)
class Sizes:
    frames: int
    rounds: int  # every system in turn, this many times; each keeps its fastest run


FULL = Sizes(frames=160, rounds=3)
QUICK = Sizes(frames=60, rounds=2)


class PipelineResult(TargetedResult):
    """Adds ``bound`` (the memory bound the growth target is checked against, and the
    machine's parallel bound) and ``sanity`` (systems whose figures cannot be right)."""

    bound: dict[str, float]
    sanity: dict[str, Any]


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


def _memwise_processes(count: int, scenes: list[Any], fuse: bool = False) -> LineRun:
    # One pool for both heavy stages: whichever is the bottleneck may use every process.
    with WorkerPool(PROCESSES, initializer=warm_up, shm_threshold=SHM_THRESHOLD) as pool:
        line = MemwiseLine(scenes, CAPACITY, pool=pool, workers=PROCESSES, fuse=fuse)
        return measure(line, count)


def _systems(count: int, scenes: list[Any], checked: dict[str, LineRun]) -> dict[str, Any]:
    def measured(run_line: Callable[[], LineRun], name: str) -> Callable[[], Figures]:
        def measure_() -> Figures:
            line = run_line()
            checked[name] = line
            return line.figures()

        return measure_

    def peer(kind: type[Line]) -> Callable[[], LineRun]:
        return lambda: measure(kind(scenes, CAPACITY), count)

    systems = {
        "serial": measured(lambda: measure(SerialLine(scenes, CAPACITY), count), "serial"),
        "memwise threads": measured(
            lambda: measure(MemwiseLine(scenes, CAPACITY, pool=None), count), "memwise threads"
        ),
        SUBJECT: measured(lambda: _memwise_processes(count, scenes), SUBJECT),
        FUSED: measured(lambda: _memwise_processes(count, scenes, fuse=True), FUSED),
    }
    for name, kind in PEERS.items():
        systems[name] = measured(peer(kind), name)
    return systems


def _drop_free_peer_rates(results: dict[str, Figures]) -> list[float]:
    """Frames/s of every peer that dropped nothing (the only ones the issue compares with)."""
    return [
        figures["frames_per_s"]
        for name, figures in results.items()
        if name in PEERS and figures["drops"] == 0
    ]


def _targets(
    results: dict[str, Figures],
    checked: dict[str, LineRun],
    bound_mib: float,
    serial_fps: float | None,
) -> dict[str, Target]:
    """Every target the issue names, and one more (marked so): memwise processes within 10 %
    of the machine's bound, which says how much the pipeline itself costs whatever the
    machine allows. Speedups over serial are over ``serial_fps``, the fastest serial pass of
    the run (the serial system's or the bound's). Without memwise's (or serial's, or any
    drop-free peer's) figures, the targets that need them have no value and are not met."""
    mine = results.get(SUBJECT)
    line = checked.get(SUBJECT)
    peers = _drop_free_peer_rates(results)

    def figure(key: str) -> float | None:
        return None if mine is None else mine[key]

    def over(peer: float | None) -> float | None:
        return None if mine is None or not peer else round(mine["frames_per_s"] / peer, 3)

    in_flight = same = None
    if line is not None:
        in_flight = line.details["peak_in_flight"]
        if "serial" in checked:
            same = int(line.verdicts == checked["serial"].verdicts)
    return {
        "memwise processes ÷ serial (its fastest pass in the run), frames/s": at_least(
            over(serial_fps), MIN_SPEEDUP_SERIAL, "x"
        ),
        "memwise processes ÷ best drop-free peer, frames/s": at_least(
            over(max(peers, default=None)), MIN_SPEEDUP_PEER, "x"
        ),
        "memory growth within the capacity bound": at_most(
            figure("growth_mib"), round(bound_mib, 1), "MiB"
        ),
        "frames in flight within the capacity": at_most(in_flight, CAPACITY),
        "drops": exactly(figure("drops"), 0),
        "order violations": exactly(figure("order_violations"), 0),
        "verdicts equal serial's (1 = equal)": exactly(same, 1),
        "memwise processes ÷ machine bound, frames/s (this benchmark's, not the issue's)": (
            at_least(None if mine is None else round(mine["of_bound"], 3), MIN_OF_BOUND, "x")
        ),
    }


def _sanity(
    results: dict[str, Figures], cpus: int, serial_fps: float, bound_fps: float
) -> dict[str, Any]:
    """Systems faster than serial on every CPU (impossible: noise, or a timing fault), faster
    than the measured bound (a noisy bound), and timed before every one of their processes
    had run an item."""
    limit = serial_fps * cpus
    return {
        "limit_frames_per_s": limit,
        "faster_than_limit": sorted(
            name for name, figures in results.items() if figures["frames_per_s"] > limit
        ),
        "faster_than_bound": sorted(
            name for name, figures in results.items() if figures["frames_per_s"] > bound_fps
        ),
        "not_warm": sorted(name for name, figures in results.items() if not figures["warm"]),
        "parallel_bound_frames_per_s": bound_fps,
    }


def _rounds(
    sizes: Sizes, scenes: list[Any], machine: MachineBound
) -> tuple[dict[str, Figures], dict[str, LineRun], dict[str, str]]:
    """Every system in turn, ``sizes.rounds`` times, with a pair of passes of the machine's
    bound before the first round and after each; each system's fastest run (its figures
    and line), with ``spread``: (fastest - slowest) / fastest frames/s over its runs. Noise
    on a shared machine only slows a run down, and whatever weighs on one round weighs on
    every system of it alike."""
    runs: dict[str, list[tuple[Figures, LineRun]]] = {}
    skipped: dict[str, str] = {}
    machine.measure()
    for _ in range(sizes.rounds):
        checked: dict[str, LineRun] = {}
        results, failed = measure_systems(_systems(sizes.frames, scenes, checked))
        machine.measure()
        skipped.update(failed)
        for name, figures in results.items():
            runs.setdefault(name, []).append((figures, checked[name]))
    best: dict[str, Figures] = {}
    lines: dict[str, LineRun] = {}
    for name, measured in runs.items():
        rates = [figures["frames_per_s"] for figures, _ in measured]
        figures, lines[name] = max(measured, key=lambda run: run[0]["frames_per_s"])
        best[name] = {**figures, "spread": (max(rates) - min(rates)) / max(rates)}
        skipped.pop(name, None)  # it ran in another round
    return best, lines, skipped


def run(quick: bool = False) -> PipelineResult:
    """Every system on the same frames, in rounds, between pairs of the bound's passes."""
    from memwise.demos._inspection import load_scenes

    sizes = QUICK if quick else FULL
    scenes = load_scenes()
    warm_up()  # serial and memwise threads run here: the same warm heap as every worker
    item_mib = _item_bytes(scenes) / MiB
    cpus = len(os.sched_getaffinity(0))
    machine = MachineBound(sizes.frames, cpus)
    results, checked, skipped = _rounds(sizes, scenes, machine)
    measured = machine.result()
    bound = measured.figures()
    for name, figures in results.items():
        cpu_ms = figures["parent_cpu_ms"] + figures["workers_cpu_ms"]
        figures["cpu_limit_fps"] = (1 if name == "serial" else cpus) * 1000 / max(cpu_ms, 1e-9)
        figures["of_bound"] = figures["frames_per_s"] / bound["parallel_frames_per_s"]
    serial = checked.get("serial")
    # Serial's fastest pass, whichever measured it: the stricter denominator for speedups.
    serial_fps = max(bound["serial_frames_per_s"], serial.frames_per_s if serial else 0.0)
    bound_mib = CAPACITY * item_mib
    targets = _targets(results, checked, bound_mib, serial_fps)
    peers = _drop_free_peer_rates(results)
    return {
        "benchmark": "pipeline",
        "results": results,
        "skipped": skipped,
        "ratios": ratios_against(results, SUBJECT, METRICS[:4]),
        "targets": targets,
        "bound": {
            "capacity": CAPACITY,
            "item_mib": round(item_mib, 2),
            "bound_mib": round(bound_mib, 1),
            "system_rounds": float(sizes.rounds),
            **bound,
            "serial_best_frames_per_s": serial_fps,
            # The most any system could gain over serial in this run.
            "parallel_over_serial": bound["parallel_frames_per_s"] / serial_fps,
            "parallel_verdicts_equal_serial": float(
                serial is not None and measured.verdicts_agree(serial.verdicts)
            ),
            # Whether the targets fit under this run's bound at all: the speedup over
            # serial the bound allows, and the share of the bound 1.2x the best peer needs.
            "serial_target_within_bound": float(
                bound["parallel_frames_per_s"] / serial_fps >= MIN_SPEEDUP_SERIAL
            ),
            "peer_target_of_bound": (
                MIN_SPEEDUP_PEER * max(peers) / bound["parallel_frames_per_s"] if peers else 0.0
            ),
        },
        "sanity": {
            **_sanity(results, cpus, serial_fps, bound["parallel_frames_per_s"]),
            # Other work took the CPUs even in the bound's best pass: no figure of this run
            # shows what the machine can do, only the ratios within it hold.
            "machine_busy": bound["parallel_cpu_share"] < BUSY_SHARE,
        },
    }


def print_table(result: PipelineResult, console: Console | None = None) -> None:
    """The figures, memwise processes ÷ each system, then the targets."""
    console = console or Console()
    print_result(result, METRICS, SUBJECT, console)
    bound, sanity = result["bound"], result["sanity"]
    console.print(
        f"memory bound: capacity {bound['capacity']:.0f} x {bound['item_mib']} MiB per item "
        f"(frame + one pass's temporaries) = {bound['bound_mib']} MiB"
    )
    console.print(
        f"machine bound, best of {bound['repeats']:.0f} passes in turn (spread "
        f"{bound['serial_spread']:.0%} alone, {bound['parallel_spread']:.0%} parallel): the "
        f"serial loop in 1 process {bound['serial_frames_per_s']:.1f} frames/s at "
        f"{bound['serial_cpu_ms']:.1f} CPU ms/frame (fastest serial pass of the run: "
        f"{bound['serial_best_frames_per_s']:.1f}), in {bound['cpus']:.0f} processes "
        f"{bound['parallel_frames_per_s']:.1f} frames/s at {bound['parallel_cpu_ms']:.1f} "
        f"({bound['cpu_slowdown']:.2f}x the CPU, {bound['parallel_cpu_share']:.0%} of the CPUs): "
        f"{bound['parallel_over_serial']:.2f}x serial, the most any system could gain in this "
        f"run. 1.2x the best peer needs {bound['peer_target_of_bound']:.0%} of it."
    )
    if sanity["faster_than_limit"]:
        console.print(
            f"[red]implausible[/]: faster than serial x {bound['cpus']:.0f} CPUs "
            f"({sanity['limit_frames_per_s']:.1f} frames/s): "
            + ", ".join(sanity["faster_than_limit"])
            + " (a noisy serial run, or a timing fault)"
        )
    if sanity["faster_than_bound"]:
        console.print(
            "[yellow]above the machine bound[/] (the bound's passes were slowed down): "
            + ", ".join(sanity["faster_than_bound"])
        )
    if sanity["machine_busy"]:
        console.print(
            f"[yellow]busy machine[/]: the bound's best parallel pass had "
            f"{bound['parallel_cpu_share']:.0%} of the CPUs; other work took the rest"
        )
    if sanity["not_warm"]:
        console.print(
            "[red]not warm[/] (some process had run no item before the timed run): "
            + ", ".join(sanity["not_warm"])
        )
    print_targets(result["targets"], console)
