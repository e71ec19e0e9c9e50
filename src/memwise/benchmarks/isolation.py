"""``memwise bench isolation``: seed 000's process-per-image previews, measured.

A film-negative grading application (seed 000) opens photographs one after another and, for
each, renders previews as the user drags sliders. Rendered in the application's own threads,
every preview's temporaries land in the application's heap, which need not shrink again; the
seed's remedy is one worker process per image, ended when the user moves on. Three ways of
running the same :class:`~memwise.benchmarks._grading.Grader` are compared:

- ``threads``: the application holds the image and renders in a ``ThreadPoolExecutor``;
- ``persistent``: one actor process holds each image in turn (``load`` on every switch);
- ``sessions``: ``Sessions(keep=2)``, one actor per image whose constructor loads it; the
  least recently used beyond two is closed, its process and all its memory gone.

Each mode runs in a fresh interpreter, so none inherits another's heap or forkserver. Every
image switch is timed in two parts: ``switch_ms``, until the new image is ready to render (the
load; for ``sessions`` also starting the process), then ``first_preview_ms``, the first preview
on it; ``switch_to_preview_ms`` is their sum, what the user waits for. ``preview_ms`` is the
median of the other previews. Memory is sampled after each image's previews: the application's
private memory and the summed private memory of the live workers, with the growth per switch
as the least-squares slope over the switches after the first two (warm-up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from importlib.util import find_spec
from typing import Any, Protocol, TypedDict

import numpy as np
from rich.console import Console

from memwise.actors import Actor, spawn
from memwise.benchmarks._grading import SAMPLES, Grader, load_samples, params_for
from memwise.benchmarks._harness import (
    BenchResult,
    Figures,
    Metric,
    print_result,
    ratios_against,
    time_call,
)
from memwise.memory import private_memory
from memwise.sessions import Sessions

__all__ = ["LATENCY_METRICS", "MEMORY_METRICS", "print_table", "run"]

MODES = ("threads", "persistent", "sessions")
SUBJECT = "sessions"
MiB = 1024 * 1024
# Seed 000's targets, for Sessions(keep=2).
MAX_GROWTH_MIB_PER_SWITCH = 1.0
MAX_FIRST_PREVIEW_MS = 150.0
# Growth is measured after these: until then the sessions' LRU fills up (one warm actor, then
# two) and the allocator sets up its arenas, which is a one-off cost, not growth.
WARMUP_SWITCHES = 2

LATENCY_METRICS = (
    Metric("switch_ms", "switch ms", ",.0f", higher_is_better=False),
    Metric("first_preview_ms", "1st preview ms", ",.0f", higher_is_better=False),
    Metric("switch_to_preview_ms", "switch+1st ms", ",.0f", higher_is_better=False),
    Metric("preview_ms", "preview ms", ",.0f", higher_is_better=False),
)
MEMORY_METRICS = (
    Metric("parent_first_mib", "app first", ",.1f", higher_is_better=False),
    Metric("parent_last_mib", "app last", ",.1f", higher_is_better=False),
    Metric("parent_growth_mib", "app +/switch", "+,.2f", higher_is_better=False),
    Metric("workers_peak_mib", "workers peak", ",.1f", higher_is_better=False),
    Metric("workers_last_mib", "workers last", ",.1f", higher_is_better=False),
    Metric("workers_growth_mib", "workers +/switch", "+,.2f", higher_is_better=False),
)


@dataclass(frozen=True)
class Sizes:
    switches: int
    previews: int  # per image, the first one included
    images: int = len(SAMPLES)  # cycled through


FULL = Sizes(switches=20, previews=10)
QUICK = Sizes(switches=5, previews=3)
# The seed's own test plan: 100 switches over 3 images, a preview or two each.
SOAK = Sizes(switches=100, previews=2, images=3)
# The seed's bar for that plan (its whole-run growth), next to ours per switch.
SEED_MAX_GROWTH_MB = 500.0

Photos = dict[str, np.ndarray]


class Target(TypedDict):
    value: float
    target: str
    met: bool


class IsolationResult(BenchResult):
    """Adds ``series``, per mode the private memory (MiB) after every switch, and ``targets``."""

    series: dict[str, dict[str, list[float]]]
    targets: dict[str, Target]


# --------------------------------------------------------------------------------------------
# The three ways to run the grader
# --------------------------------------------------------------------------------------------


class Mode(Protocol):
    def switch(self, name: str) -> None:
        """Open image ``name``; return once it is ready to render."""

    def preview(self, step: int) -> np.ndarray:
        """Render the ``step``-th preview of the open image and return it."""

    def worker_pids(self) -> list[int]:
        """The live worker processes holding images."""


class Threads:
    """The application's own threads render; the image lives in the application."""

    def __init__(self, photos: Photos, executor: ThreadPoolExecutor) -> None:
        self._photos = photos
        self._executor = executor
        self._grader = Grader()

    def switch(self, name: str) -> None:
        self._grader.load(self._photos[name])

    def preview(self, step: int) -> np.ndarray:
        return self._executor.submit(self._grader.preview, params_for(step)).result()

    def worker_pids(self) -> list[int]:
        return []


class Persistent:
    """One actor process for the whole run: every image is loaded into the same process."""

    def __init__(self, photos: Photos, actor: Actor) -> None:
        self._photos = photos
        self._actor = actor

    def switch(self, name: str) -> None:
        self._actor.call("load", self._photos[name]).result()

    def preview(self, step: int) -> np.ndarray:
        return self._actor.latest("preview", params_for(step)).result()

    def worker_pids(self) -> list[int]:
        pid = self._actor.pid
        return [] if pid is None else [pid]


class PerImage:
    """``Sessions(keep=2)``: an actor per image; switching closes the least recently used."""

    def __init__(self, photos: Photos, sessions_keep: int = 2) -> None:
        self._photos = photos
        self._opened: dict[str, Actor] = {}
        self.sessions: Sessions[str] = Sessions(self._open, sessions_keep)
        self._current: Actor | None = None

    def _open(self, name: str) -> Actor:
        # The grader is built, and the image loaded, in the actor's process.
        actor = spawn(Grader, self._photos[name], isolation="always")
        self._opened[name] = actor
        return actor

    def switch(self, name: str) -> None:
        self._current = self.sessions[name]
        self._current.call("shape").result()  # the process is up and the image loaded

    def preview(self, step: int) -> np.ndarray:
        assert self._current is not None, "switch to an image first"
        return self._current.latest("preview", params_for(step)).result()

    def worker_pids(self) -> list[int]:
        # Actors closed by the LRU have no pid any more.
        pids = (actor.pid for actor in self._opened.values())
        return [pid for pid in pids if pid is not None]


@contextmanager
def _mode(name: str, photos: Photos) -> Iterator[Mode]:
    if name == "threads":
        with ThreadPoolExecutor(2, thread_name_prefix="preview") as executor:
            yield Threads(photos, executor)
    elif name == "persistent":
        with spawn(Grader, isolation="always") as actor:
            yield Persistent(photos, actor)
    else:
        per_image = PerImage(photos)
        with per_image.sessions:
            yield per_image


# --------------------------------------------------------------------------------------------
# Measuring one mode (in its own interpreter)
# --------------------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _growth(values: list[float]) -> float:
    """MiB per switch: the least-squares slope of ``values``, warm-up switches left out."""
    steady = values[WARMUP_SWITCHES:]
    if len(steady) < 2:
        return 0.0
    return statistics.linear_regression(range(len(steady)), steady).slope


def _private_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += private_memory(pid)
        except ProcessLookupError:  # closed between listing and measuring
            continue
    return total / MiB


def measure(mode_name: str, sizes: Sizes) -> dict[str, Any]:
    """Run one mode in this process; return its figures and per-switch memory series."""
    photos = load_samples()
    switch_s: list[float] = []
    first_s: list[float] = []
    total_s: list[float] = []
    later_s: list[float] = []
    parent: list[float] = []
    workers: list[float] = []
    with _mode(mode_name, photos) as mode:
        for index in range(sizes.switches):
            start = time.perf_counter()
            mode.switch(SAMPLES[index % sizes.images])
            ready = time.perf_counter()
            mode.preview(0)
            done = time.perf_counter()
            switch_s.append(ready - start)
            first_s.append(done - ready)
            total_s.append(done - start)
            later_s.extend(time_call(partial(mode.preview, s)) for s in range(1, sizes.previews))
            parent.append(_private_mib([os.getpid()]))
            workers.append(_private_mib(mode.worker_pids()))
    figures = {
        "switch_ms": _ms(statistics.median(switch_s)),
        "first_preview_ms": _ms(statistics.median(first_s)),
        "switch_to_preview_ms": _ms(statistics.median(total_s)),
        "preview_ms": _ms(statistics.median(later_s)) if later_s else 0.0,
        "parent_first_mib": parent[0],
        "parent_last_mib": parent[-1],
        "parent_growth_mib": _growth(parent),
        "workers_peak_mib": max(workers),
        "workers_last_mib": workers[-1],
        "workers_growth_mib": _growth(workers),
    }
    return {"figures": figures, "series": {"parent_mib": parent, "workers_mib": workers}}


def _child() -> None:
    """Entry point of the interpreter measuring one mode: arguments on stdin, JSON on stdout."""
    request = json.loads(sys.stdin.read())
    print(json.dumps(measure(request["mode"], Sizes(**request["sizes"]))))


def _in_fresh_interpreter(mode: str, sizes: Sizes) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", "from memwise.benchmarks.isolation import _child; _child()"],
        input=json.dumps({"mode": mode, "sizes": asdict(sizes)}),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "no output")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _targets(results: dict[str, Figures], soak: bool) -> dict[str, Target]:
    if SUBJECT not in results:
        return {}
    mine = results[SUBJECT]
    checks = {
        "sessions: app growth MiB per switch": (
            mine["parent_growth_mib"],
            MAX_GROWTH_MIB_PER_SWITCH,
            " MiB",
        ),
        "sessions: first preview after a switch, ms": (
            mine["first_preview_ms"],
            MAX_FIRST_PREVIEW_MS,
            " ms",
        ),
        "sessions: switch + first preview, ms": (
            mine["switch_to_preview_ms"],
            MAX_FIRST_PREVIEW_MS,
            " ms",
        ),
    }
    if soak:
        # The seed's bar: the application's memory after the run against before it (MB).
        growth_mb = (mine["parent_last_mib"] - mine["parent_first_mib"]) * MiB / 1e6
        checks["sessions: app growth over the soak, MB (seed's bar)"] = (
            growth_mb,
            SEED_MAX_GROWTH_MB,
            " MB",
        )
    return {
        name: {"value": value, "target": f"<= {limit:g}{unit}", "met": value <= limit}
        for name, (value, limit, unit) in checks.items()
    }


def run(quick: bool = False, soak: bool = False) -> IsolationResult:
    """Measure each mode in a fresh interpreter; ``quick`` switches fewer images, ``soak``
    runs the seed's own plan (100 switches over 3 images)."""
    sizes = SOAK if soak else QUICK if quick else FULL
    results: dict[str, Figures] = {}
    series: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    if find_spec("skimage") is None:
        reason = "needs scikit-image for the photographs: pip install 'memwise[demo]'"
        skipped = dict.fromkeys(MODES, reason)
    else:
        for mode in MODES:
            try:
                measured = _in_fresh_interpreter(mode, sizes)
            except RuntimeError as exc:
                skipped[mode] = str(exc)
                continue
            results[mode] = measured["figures"]
            series[mode] = measured["series"]
    return {
        "benchmark": "isolation",
        "results": results,
        "skipped": skipped,
        "ratios": ratios_against(results, SUBJECT, LATENCY_METRICS),
        "series": series,
        "targets": _targets(results, soak),
    }


def print_table(result: IsolationResult, console: Console | None = None) -> None:
    """Memory, then latency with the sessions ÷ peer ratios, then the targets."""
    console = console or Console()
    memory_only = BenchResult(
        benchmark=f"{result['benchmark']} (private memory, MiB)",
        results=result["results"],
        skipped={},
        ratios={},
    )
    print_result(memory_only, MEMORY_METRICS, SUBJECT, console)
    print_result(result, LATENCY_METRICS, SUBJECT, console)
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"{mark} {name}: {target['value']:,.2f} (target {target['target']})")
