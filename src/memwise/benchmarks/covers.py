"""``memwise bench covers``: seed 001's cover service, in workers vs in its own threads.

The same Starlette service, started as a real process on loopback, renders covers two ways:
``pool`` (memwise: scale-to-zero workers under a 100 MiB ``MemoryBudget``) and ``inline``
(the seed's service: renders in the service's own threads). Both are measured from outside
in the same run (see :mod:`memwise.demos.covers.measure`). Targets, from the pool run: cold
idle RSS of the service <= 30 MiB, peak PSS of service + workers during three concurrent
renders <= the budget, SSIM of the float32 render against float64 >= 0.99; first-request
latency (and its status) is a figure of the pool run, without a target.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from memwise.benchmarks._harness import at_least, at_most, print_targets
from memwise.demos.covers.measure import FULL, SHORT, measure, ssim_float32_vs_float64
from memwise.demos.covers.scenario import MAX_IDLE_RSS_MIB, MIN_SSIM

MODES = ("pool", "inline")
FIGURES = (
    "cold_idle_rss_mib",
    "cold_idle_private_mib",
    "first_request_s",
    "three_renders_s",
    "peak_pss_mib",
    "peak_private_mib",
    "idle_after_rss_mib",
    "idle_after_private_mib",
)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure both modes; targets come from the pool run."""
    sizes = SHORT if quick else FULL
    results = {mode: measure(sizes, inline=mode == "inline") for mode in MODES}
    ssim = ssim_float32_vs_float64()
    pool = results["pool"]
    ratios = {
        "inline": {
            name: round(pool[name] / results["inline"][name], 3)
            for name in FIGURES
            if results["inline"].get(name)
        }
    }
    return {
        "benchmark": "covers",
        # Every entry of results maps to figures: the SSIM is the float32 render's, in no mode.
        "results": results | {"float32 render": {"ssim_vs_float64": ssim}},
        "ratios": ratios,
        "targets": {
            "cold-start idle RSS of the service": at_most(
                pool["cold_idle_rss_mib"], MAX_IDLE_RSS_MIB, "MiB"
            ),
            "peak PSS during 3 concurrent renders (the budget)": at_most(
                pool["peak_pss_mib"], pool["budget_mib"], "MiB"
            ),
            "SSIM float32 vs float64": at_least(round(ssim, 5), MIN_SSIM),
        },
    }


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="memwise bench covers (pool / inline = ratio)")
    for column in ("figure", *MODES, "ratio"):
        table.add_column(column, justify="right")
    ratios = result["ratios"]["inline"]
    for name in FIGURES:
        values = [result["results"][mode].get(name) for mode in MODES]
        table.add_row(name, *(str(v) for v in values), str(ratios.get(name, "")))
    console.print(table)
    console.print(
        f"first-request latency {result['results']['pool']['first_request_s']} s"
        f" (status {result['results']['pool']['first_status']}), reported without a target"
    )
    print_targets(result["targets"], console)
