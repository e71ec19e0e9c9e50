"""``memwise demo photos``: grade every scikit-image sample photograph in supervised workers.

What it shows a newcomer, on real data and with no network: work spread over worker
processes with a progress bar; a worker killed on purpose in the middle of a task, and the
run still completing every photo (the lost task re-runs on a fresh worker); and honest memory
figures (private memory of the parent and of each worker, never summed RSS).
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memwise import shared
from memwise.demos import Scenario
from memwise.memory import format_size, usage
from memwise.pool.api import WorkerPool
from memwise.pool.snapshot import PoolSnapshot

# The photographs that ship inside scikit-image (the others need a download).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
# Each photo is graded at several strengths, as an interactive colour-grading app would.
STRENGTHS = (0.5, 1.0, 2.0)


def load_photo(name: str) -> Any:
    """A photograph as a float32 RGB array in [0, 1]."""
    import numpy as np
    from skimage import data

    image = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def warm_up() -> None:
    """Worker initializer: import scikit-image once per worker, before the first task."""
    import skimage.exposure
    import skimage.filters  # noqa: F401


def grade(name: str, image: Any, strength: float) -> dict[str, Any]:
    """A small colour-grading chain: sharpen, equalize, find edges; return summary figures."""
    import numpy as np
    from skimage import color, exposure, filters

    started = time.perf_counter()
    sharp = filters.unsharp_mask(image, radius=2.0, amount=strength, channel_axis=-1)
    graded = exposure.equalize_adapthist(np.clip(sharp, 0.0, 1.0), clip_limit=0.01 * strength)
    edges = filters.sobel(color.rgb2gray(graded))
    return {
        "photo": name,
        "strength": strength,
        "shape": image.shape,
        "edge_density": float((edges > 0.05).mean()),
        "brightness": float(graded.mean()),
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
    }


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    failures: list[str]
    killed_pid: int | None
    seconds: float
    snapshot: PoolSnapshot
    peak_worker_private: int
    expected: int


def run(*, short: bool, console: Console) -> Scenario:
    """The scenario: every photo at every strength (the first third of the photos when short)."""
    outcome = grade_all(
        workers=2, kill=True, console=console, photos=PHOTOS[:7] if short else PHOTOS
    )
    passed = report(outcome, console)
    return Scenario(
        name="photos",
        checked=f"{len(outcome.results)}/{outcome.expected} graded, one worker killed",
        passed=passed,
        figure=f"{outcome.seconds:.1f} s, {outcome.snapshot.restarts} restart(s)",
    )


def grade_all(
    workers: int = 2,
    kill: bool = True,
    console: Console | None = None,
    photos: tuple[str, ...] = PHOTOS,
) -> Outcome:
    """Grade every photo at every strength; with ``kill``, SIGKILL one busy worker midway."""
    console = console or Console()
    console.print(f"Loading {len(photos)} sample photographs from scikit-image ...")
    # Each photo is copied once into shared memory; every task then receives it as a handle
    # to the same pages instead of a pickled copy.
    arrays = {name: shared.copy(load_photo(name), writable=False) for name in photos}
    jobs = [(name, strength) for strength in STRENGTHS for name in photos]
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    killed_pid = None
    peak = 0
    started = time.perf_counter()
    with WorkerPool(workers, initializer=warm_up, retries=1) as pool:
        futures: dict[Future[dict[str, Any]], tuple[str, float]] = {
            pool.submit(grade, name, arrays[name], strength): (name, strength)
            for name, strength in jobs
        }
        with _progress(console) as progress:
            bar = progress.add_task("grading", total=len(futures), restarts=0)
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except Exception as exc:
                    failures.append(f"{futures[future]}: {exc!r}")
                peak = max(peak, _workers_private(pool))
                if kill and killed_pid is None and len(results) >= len(jobs) // 3:
                    killed_pid = _kill_busy_worker(pool)
                    if killed_pid is not None:
                        console.print(f"[yellow]killed worker {killed_pid} mid-task (SIGKILL)")
                progress.update(bar, advance=1, restarts=pool.snapshot().restarts)
        snapshot = pool.snapshot()
    seconds = time.perf_counter() - started
    return Outcome(results, failures, killed_pid, seconds, snapshot, peak, len(jobs))


def report(outcome: Outcome, console: Console | None = None) -> bool:
    """Print the summary; return whether every photo was graded."""
    console = console or Console()
    expected = outcome.expected
    table = Table(title="memwise demo photos", show_header=False)
    photos = expected // len(STRENGTHS)
    table.add_row("photos x strengths", f"{photos} x {len(STRENGTHS)} = {expected} tasks")
    table.add_row("completed", str(len(outcome.results)))
    table.add_row("failed", str(len(outcome.failures)))
    table.add_row("worker killed on purpose", str(outcome.killed_pid or "no"))
    table.add_row("worker restarts", str(outcome.snapshot.restarts))
    table.add_row("wall time", f"{outcome.seconds:.2f} s")
    table.add_row("parent private memory", format_size(usage().private))
    table.add_row("peak private memory, all workers", format_size(outcome.peak_worker_private))
    slots = shared.stats()
    table.add_row(
        "photos through shared memory",
        f"{slots.created} slots, {format_size(slots.bytes)}: pixels were never pickled",
    )
    console.print(table)
    for failure in outcome.failures:
        console.print(f"[red]failed: {failure}")
    complete = len(outcome.results) == expected and not outcome.failures
    if complete:
        console.print("[green]every photo was graded, despite the killed worker")
    return complete


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("restarts: {task.fields[restarts]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _kill_busy_worker(pool: WorkerPool) -> int | None:
    for worker in pool.snapshot().workers:
        if worker.state == "busy" and worker.pid is not None:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            return worker.pid
    return None


def _workers_private(pool: WorkerPool) -> int:
    return sum(worker.private or 0 for worker in pool.snapshot().workers)
