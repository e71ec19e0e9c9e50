"""What every benchmark shares: timing, the JSON shape and the printed tables.

Absolute times on shared machines drift from run to run; figures taken in the same run, and the
ratios between them, are what hold. Hence best-of-N for throughput (noise only ever slows a run
down) and the median for per-call latency (robust to the odd scheduler hiccup).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from rich.console import Console
from rich.table import Table

Figures = dict[str, float]


class Target(TypedDict):
    """One target of a benchmark, checked against a figure of the same run.

    ``value`` is None when this run has no figure for it (a system was missing or failed; the
    benchmark's ``skipped`` says why); such a target is never met.
    """

    value: float | None
    target: str  # e.g. "<= 30 MB", ">= 1.5x pebble", "== 0"
    met: bool


def at_most(value: float | None, bound: float, unit: str = "") -> Target:
    """``value <= bound``; ``unit`` is shown after the bound ("MiB", "x in-process")."""
    return _check(value, "<=", bound, unit, lambda v: v <= bound)


def at_least(value: float | None, bound: float, unit: str = "") -> Target:
    """``value >= bound``."""
    return _check(value, ">=", bound, unit, lambda v: v >= bound)


def exactly(value: float | None, want: float, unit: str = "") -> Target:
    """``value == want``: counts that must be zero, or a check's outcome as ``int(ok) == 1``."""
    return _check(value, "==", want, unit, lambda v: v == want)


def _check(
    value: float | None, op: str, bound: float, unit: str, holds: Callable[[float], bool]
) -> Target:
    # A bool would print as true/false and compare as 0/1 by accident: callers say int(ok).
    if isinstance(value, bool):
        raise TypeError(f"a target's value is a number, not a bool ({value!r}); use int()")
    met = value is not None and holds(value)
    return {"value": value, "target": f"{op} {bound:g}{_spaced(unit)}", "met": met}


def _spaced(unit: str) -> str:
    # "1.5x Ray" and "30 MiB": a ratio's x sticks to the number.
    return unit if not unit or unit.startswith("x") else f" {unit}"


class BenchResult(TypedDict):
    """The JSON object a benchmark returns and ``memwise bench --json`` prints.

    ``results`` maps a system name to its figures, ``skipped`` a system name to the reason it has
    no figures, and ``ratios`` a peer name to memwise's figure divided by that peer's, per metric.
    """

    benchmark: str
    results: dict[str, Figures]
    skipped: dict[str, str]
    ratios: dict[str, Figures]


class TargetedResult(BenchResult):
    """``BenchResult`` plus ``targets``: each target with its value from this same run."""

    targets: dict[str, Target]


@dataclass(frozen=True)
class Metric:
    """One column of a results table."""

    key: str
    header: str
    fmt: str
    higher_is_better: bool = True


def time_call(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, in seconds."""
    return min(time_call(fn) for _ in range(repeats))


def median_time(fn: Callable[[], object], samples: int) -> float:
    """The median of ``samples`` calls, in seconds."""
    return statistics.median(time_call(fn) for _ in range(samples))


def measure_systems(
    measures: Mapping[str, Callable[[], Figures]],
) -> tuple[dict[str, Figures], dict[str, str]]:
    """Run each system's measurement; a system that is missing or breaks is skipped, with why.

    A peer that breaks must not take the other systems' figures down with it.
    """
    results: dict[str, Figures] = {}
    skipped: dict[str, str] = {}
    for name, measure in measures.items():
        try:
            results[name] = measure()
        except ImportError as exc:
            skipped[name] = f"not available: {exc}"
        except Exception as exc:
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
    return results, skipped


def ratios_against(
    results: Mapping[str, Figures], subject: str, metrics: Sequence[Metric]
) -> dict[str, Figures]:
    """``subject``'s figure over each other system's, per metric; empty without ``subject``."""
    if subject not in results:
        return {}
    mine = results[subject]
    return {
        peer: {m.key: mine[m.key] / figures[m.key] for m in metrics if figures[m.key]}
        for peer, figures in results.items()
        if peer != subject
    }


def print_result(
    result: BenchResult, metrics: Sequence[Metric], subject: str, console: Console | None = None
) -> None:
    """Print the figures, the ratios of ``subject`` to each peer, and what was skipped."""
    console = console or Console()
    console.print(_figures_table(result, metrics))
    if result["ratios"]:
        console.print(_ratios_table(result, metrics, subject))
    for system, reason in result["skipped"].items():
        console.print(f"[yellow]skipped[/] {system}: {reason}")


def print_targets(targets: Mapping[str, Target], console: Console | None = None) -> None:
    """One line per target: met or missed, the value and the target."""
    console = console or Console()
    for name, t in targets.items():
        mark = "[green]met[/]" if t["met"] else "[red]missed[/]"
        shown = "no figure" if t["value"] is None else format(t["value"], ",.3g")
        console.print(f"target {mark}: {name}: {shown} (target {t['target']})")


def _figures_table(result: BenchResult, metrics: Sequence[Metric]) -> Table:
    table = Table(title=f"{result['benchmark']} benchmark")
    table.add_column("system", no_wrap=True)
    for m in metrics:
        table.add_column(m.header, justify="right")
    for system, figures in result["results"].items():
        table.add_row(system, *(format(figures[m.key], m.fmt) for m in metrics))
    return table


def _ratios_table(result: BenchResult, metrics: Sequence[Metric], subject: str) -> Table:
    lower = ", ".join(m.header for m in metrics if not m.higher_is_better)
    caption = f"above 1 favours {subject}" + (f", except for {lower}" if lower else "")
    table = Table(title=f"{subject} ÷ peer", caption=caption)
    table.add_column("peer", no_wrap=True)
    for m in metrics:
        table.add_column(m.header, justify="right")
    for peer, ratios in result["ratios"].items():
        table.add_row(peer, *(_format_ratio(ratios.get(m.key)) for m in metrics))
    return table


def _format_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def stage_table(
    title: str, stages: Mapping[str, float], unit: str, fmt: str, notes: Mapping[str, str]
) -> Table:
    """A breakdown of one round trip: each stage, its figure in ``unit``, what it is."""
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)
    table.add_column(unit, justify="right")
    table.add_column("what")
    for stage, value in stages.items():
        table.add_row(stage, format(value, fmt), notes.get(stage, ""))
    return table
