"""``memwise bench import``: what ``import memwise`` and an idle worker cost.

An application pays for ``import memwise`` at every start, even on paths that never run a
worker, and a pool pays for its idle workers for as long as it lives. Both are measured
against bare Python in fresh interpreters, best of N (noise only ever adds):

- ``rss_mib``: the interpreter's peak resident memory once the statement has run;
- ``import_ms``: the statement alone, timed inside the interpreter;
- ``wall_ms``: the whole ``python -c`` run, start-up included, timed from outside;
- ``*_over_bare``: the same minus bare Python's.

The rounds interleave the statements, so a slow patch of the machine hits all of them alike.
The idle worker is a ``WorkerPool(1)`` worker right after start. ``private`` is memwise's
measure (Linux ``RssAnon``), which also counts the anonymous pages the worker still shares
copy-on-write with the forkserver (everything preloaded there); ``USS`` counts only the pages
no other process maps, i.e. what the worker's exit gives back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from rich.console import Console

from memwise.benchmarks._harness import (
    BenchResult,
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_most,
    print_result,
    print_targets,
)

__all__ = ["IMPORT_METRICS", "WORKER_METRICS", "print_table", "run"]

MiB = 1024 * 1024
BARE = "python -c pass"
STATEMENTS = {
    BARE: "pass",
    "import memwise": "import memwise",
    "from memwise import MemoryBudget": "from memwise import MemoryBudget",
}
WORKER = "idle WorkerPool worker"
# The targets.
MAX_RSS_OVER_BARE_MIB = 2.0
MAX_WALL_OVER_BARE_MS = 20.0
MAX_IDLE_WORKER_MIB = 10.0

# Runs in the child. Only ``time`` (built in) is imported before the statement, so whatever
# the statement pulls in is counted. The peak RSS is Linux's VmHWM, not ``ru_maxrss``: the
# latter survives fork and exec, so a child would report its parent's peak when that is higher.
_CHILD = """\
import time
start = time.perf_counter()
{statement}
seconds = time.perf_counter() - start
try:
    with open("/proc/self/status") as status:
        peak = int(status.read().split("VmHWM:")[1].split()[0]) * 1024
except OSError:
    import resource, sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024
print(peak, seconds)
"""

IMPORT_METRICS = (
    Metric("rss_mib", "peak RSS MiB", ",.2f", higher_is_better=False),
    Metric("rss_over_bare_mib", "RSS over bare MiB", "+,.2f", higher_is_better=False),
    Metric("import_ms", "import ms", ",.2f", higher_is_better=False),
    Metric("wall_ms", "wall ms", ",.1f", higher_is_better=False),
    Metric("wall_over_bare_ms", "wall over bare ms", "+,.1f", higher_is_better=False),
)
WORKER_METRICS = (
    Metric("private_mib", "private MiB", ",.2f", higher_is_better=False),
    Metric("uss_mib", "USS MiB", ",.2f", higher_is_better=False),
    Metric("pss_mib", "PSS MiB", ",.2f", higher_is_better=False),
    Metric("rss_mib", "RSS MiB", ",.2f", higher_is_better=False),
)


@dataclass(frozen=True)
class Sizes:
    rounds: int


FULL = Sizes(rounds=7)
QUICK = Sizes(rounds=3)


ImportResult = TargetedResult


def _one_run(statement: str) -> Figures:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    peak, seconds = done.stdout.split()
    return {
        "rss_mib": int(peak) / MiB,
        "import_ms": float(seconds) * 1e3,
        "wall_ms": wall * 1e3,
    }


def _imports(sizes: Sizes) -> dict[str, Figures]:
    runs: dict[str, list[Figures]] = {name: [] for name in STATEMENTS}
    for _ in range(sizes.rounds):
        for name, statement in STATEMENTS.items():
            runs[name].append(_one_run(statement))
    best = {
        name: {key: min(run[key] for run in samples) for key in samples[0]}
        for name, samples in runs.items()
    }
    bare = best[BARE]
    for figures in best.values():
        figures["rss_over_bare_mib"] = figures["rss_mib"] - bare["rss_mib"]
        figures["wall_over_bare_ms"] = figures["wall_ms"] - bare["wall_ms"]
    return best


def _idle_worker() -> Figures:
    import psutil

    from memwise import WorkerPool
    from memwise.memory import usage

    with WorkerPool(1) as pool:  # returns once the worker is ready
        pid = pool.snapshot().workers[0].pid
        assert pid is not None  # the pool returns once its worker is ready
        measured = usage(pid)
        unique = psutil.Process(pid).memory_full_info().uss
    return {
        "private_mib": measured.private / MiB,
        "uss_mib": unique / MiB,
        "pss_mib": (measured.pss or 0) / MiB,
        "rss_mib": measured.rss / MiB,
    }


def _targets(results: dict[str, Figures]) -> dict[str, Target]:
    checks = {
        "import memwise: RSS over bare Python, MiB": (
            results["import memwise"]["rss_over_bare_mib"],
            MAX_RSS_OVER_BARE_MIB,
        ),
        "import memwise: wall time over bare Python, ms": (
            results["import memwise"]["wall_over_bare_ms"],
            MAX_WALL_OVER_BARE_MS,
        ),
        "idle worker: private memory, MiB": (results[WORKER]["private_mib"], MAX_IDLE_WORKER_MIB),
    }
    return {name: at_most(value, limit) for name, (value, limit) in checks.items()}


def run(quick: bool = False) -> ImportResult:
    """Measure the imports in fresh interpreters, then an idle worker; ``quick``: fewer rounds."""
    results = {**_imports(QUICK if quick else FULL), WORKER: _idle_worker()}
    return {
        "benchmark": "import",
        "results": results,
        "skipped": {},
        "ratios": {},
        "targets": _targets(results),
    }


def print_table(result: ImportResult, console: Console | None = None) -> None:
    """The import figures, the idle worker's, and the targets."""
    console = console or Console()
    imports = {name: f for name, f in result["results"].items() if name != WORKER}
    worker = {WORKER: result["results"][WORKER]}
    for rows, metrics in ((imports, IMPORT_METRICS), (worker, WORKER_METRICS)):
        table = BenchResult(benchmark=result["benchmark"], results=rows, skipped={}, ratios={})
        print_result(table, metrics, "memwise", console)
    print_targets(result["targets"], console)
