"""``memwise bench chaos``: faults injected under load, and what the pool lost (nothing).

The same code runs in ``tests/chaos`` at a small size and here at a large one. Each experiment
returns plain figures; the benchmark prints one table: load held, faults injected by kind, tasks
lost (must be 0), hangs, leaks and memory drift.

- **Kill storm**: a stream of tasks (optionally with large arrays that travel through
  shared-memory slots) while a killer thread SIGKILLs a busy worker at the times of a Poisson
  process. With ``retries`` every task must complete with the right result; without, each lost
  task fails alone with ``WorkerCrashed``.
- **Poison task**: one task that kills every worker it runs on, among healthy ones: it fails
  after ``retries + 1`` crashes and the rest complete.
- **Storms on the layers above the pool**: an actor's process, a pipeline's process stage and
  the workers computing data products are killed the same way; every call, item and peak
  must come out right.
- **Soak**: mixed load (small and large tasks, kills, timeouts) for a while; the parent's private
  memory must stay flat after warm-up, descriptors must not grow, the worker count must hold.
"""

from __future__ import annotations

from typing import Any

from memwise.benchmarks._harness import Target
from memwise.benchmarks._storms import (
    MiB,
    StormFigures,
    actor_storm,
    data_storm,
    kill_storm,
    leftovers,
    pipeline_storm,
    poison,
    soak,
)

__all__ = [
    "StormFigures",
    "actor_storm",
    "data_storm",
    "kill_storm",
    "pipeline_storm",
    "poison",
    "print_table",
    "run",
    "soak",
]


def run(quick: bool = False) -> dict[str, Any]:
    """Every experiment, at benchmark size (``quick``: a smoke run of a minute or so)."""
    scale = 1 if quick else 10
    results: dict[str, Any] = {}
    results["storm"] = kill_storm(tasks=1000 * scale, rate=4.0, retries=4).as_dict()
    results["storm_arrays"] = kill_storm(
        tasks=200 * scale, rate=4.0, retries=4, array_bytes=4 * MiB
    ).as_dict()
    results["storm_no_retries"] = kill_storm(tasks=1000 * scale, rate=4.0, retries=0).as_dict()
    results["poison"] = poison(retries=2)
    results["actor"] = actor_storm(calls=200 * scale)
    results["pipeline"] = pipeline_storm(items=300 * scale)
    results["data"] = data_storm()
    results["soak"] = soak(seconds=30.0 if quick else 600.0, warmup=5.0 if quick else 30.0)
    results["leftovers"] = leftovers()
    storms = [results[name] for name in ("storm", "storm_arrays", "storm_no_retries")]
    lost = sum(s["lost"] + s["wrong"] + sum(s["other_errors"].values()) for s in storms)
    hangs = sum(s["hung"] for s in storms)
    soak_figures = results["soak"]
    actor_outcomes = results["actor"]["outcomes"]
    layers_ok = (
        set(actor_outcomes) <= {"completed", "WorkerCrashed"}
        and results["actor"]["works_after"]
        and results["pipeline"]["in_order_and_right"]
        and results["data"]["same_as_quiet_run"]
    )
    lost += soak_figures["wrong"]
    targets = {
        "tasks lost": _target(lost, "== 0", lost == 0),
        "actors, pipelines, data products intact": _target(
            int(layers_ok), "== 1 (every call, item and peak)", layers_ok
        ),
        "hangs": _target(hangs, "== 0", hangs == 0),
        "poison task fails alone": _target(
            results["poison"]["healthy_completed"],
            f"== {results['poison']['healthy']} and WorkerCrashed",
            results["poison"]["error"] == "WorkerCrashed"
            and results["poison"]["healthy_completed"] == results["poison"]["healthy"],
        ),
        "processes and segments left": _target(
            sum(results["leftovers"].values()), "== 0", not any(results["leftovers"].values())
        ),
        "descriptor growth": _target(
            max(s["descriptors_grown"] for s in [*storms, soak_figures]),
            "<= 0",
            all(s["descriptors_grown"] <= 0 for s in [*storms, soak_figures]),
        ),
        "parent private drift, MiB/min": _target(
            round(soak_figures["private_drift_mib_per_min"], 3),
            "<= 1",
            soak_figures["private_drift_mib_per_min"] <= 1.0,
        ),
    }
    return {"benchmark": "chaos", "results": results, "targets": targets}


def _target(value: float, target: str, met: bool) -> Target:
    return {"value": value, "target": target, "met": bool(met)}


def print_table(result: dict[str, Any]) -> None:
    """One table: per experiment the load held, faults, losses, hangs; then the targets."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="chaos benchmark")
    for column in ("experiment", "tasks", "tasks/s", "faults", "lost", "hangs", "fd growth"):
        table.add_column(column, justify="right")
    for name in ("storm", "storm_arrays", "storm_no_retries"):
        s = result["results"][name]
        faults = f"{s['kills']} SIGKILL"
        lost = s["lost"] + s["wrong"] + sum(s["other_errors"].values())
        table.add_row(
            name,
            str(s["tasks"]),
            f"{s['tasks_per_s']:,.0f}",
            faults,
            f"{lost} ({s['crashed']} WorkerCrashed)",
            str(s["hung"]),
            str(s["descriptors_grown"]),
        )
    soak_figures = result["results"]["soak"]
    table.add_row(
        "soak",
        str(soak_figures["tasks"]),
        f"{soak_figures['tasks'] / soak_figures['seconds']:,.0f}",
        f"{soak_figures['kills']} SIGKILL, {soak_figures['timed_out']} timeouts",
        str(soak_figures["wrong"]),
        "0",
        str(soak_figures["descriptors_grown"]),
    )
    console.print(table)
    figures = result["results"]
    console.print(
        f"actor storm: {figures['actor']['kills']} kills, outcomes {figures['actor']['outcomes']}"
        f"; pipeline storm: {figures['pipeline']['kills']} kills, "
        f"{figures['pipeline']['delivered']}/{figures['pipeline']['items']} items in order: "
        f"{figures['pipeline']['in_order_and_right']}; data-product storm: "
        f"{figures['data']['kills']} kills, same peaks as a quiet run: "
        f"{figures['data']['same_as_quiet_run']}"
    )
    poisoned = result["results"]["poison"]
    console.print(f"poison task: {poisoned['error']}: {poisoned['message']}")
    console.print(
        f"soak: parent private memory drift {soak_figures['private_drift_mib_per_min']:.3f}"
        f" MiB/min; leftovers {result['results']['leftovers']}"
    )
    targets = Table(title="targets")
    for column in ("what", "value", "target", "met"):
        targets.add_column(column)
    for what, t in result["targets"].items():
        targets.add_row(what, str(t["value"]), t["target"], "yes" if t["met"] else "[red]no")
    console.print(targets)
