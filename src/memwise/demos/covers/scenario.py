"""``memwise demo covers``: the cover service of seed 001, started and measured for real.

The service runs in its own process on 127.0.0.1; this process is its client and its
observer. The seed's bars: the idle service at most 30 MB (its RSS, measured on the service
process at cold start), renders within the memory budget (100 MiB: service and workers,
sampled while three covers render at once), and the float32 render indistinguishable from
the float64 one (SSIM >= 0.99). Also checked: the first cover arrives (a worker starts from
zero), a burst gets only 200s or 503s, a service whose budget cannot fit a render answers 503
with Retry-After and the budget's message once ``max_wait`` has passed, bad input gets 400
with a message, and once idle the service holds no worker and has imported neither numpy nor
Pillow.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memwise.demos import Scenario
from memwise.demos.covers.measure import FULL, SHORT, measure, ssim_float32_vs_float64

MAX_IDLE_RSS_MIB = 30.0
MIN_SSIM = 0.99


def checks(figures: dict[str, Any], ssim: float) -> dict[str, bool]:
    """The seed's bars and the service's behaviour, from one run's figures."""
    tight = figures["tight"]
    return {
        f"cold idle RSS <= {MAX_IDLE_RSS_MIB:g} MiB": (
            figures["cold_idle_rss_mib"] <= MAX_IDLE_RSS_MIB
        ),
        "peak (service + workers, PSS) <= budget": (
            figures["peak_pss_mib"] <= figures["budget_mib"]
        ),
        f"SSIM float32 vs float64 >= {MIN_SSIM}": ssim >= MIN_SSIM,
        "first cover is a JPEG": figures["first_status"] == 200 and figures["first_jpeg"],
        "three concurrent covers rendered": figures["three_statuses"] == [200, 200, 200],
        "burst: only 200 or 503 (with Retry-After and the budget's message)": (
            set(figures["burst"]) <= {"200", "503"} and figures["burst_refusals_well_formed"]
        ),
        "tight budget: 503 with Retry-After and the budget's message": (
            tight["status"] == 503 and tight["refusal"] is not None
        ),
        "bad input: 400 with a message": figures["bad_input"]["status"] == 400,
        "idle again: no worker, neither numpy nor Pillow imported": (
            figures["idle_workers"] == 0 and not figures["idle_loaded"]
        ),
    }


def run(*, short: bool, console: Console) -> Scenario:
    """Start the service, measure it, print the figures and the checks."""
    sizes = SHORT if short else FULL
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("cover service", total=2)
        figures = measure(sizes)
        progress.update(bar, advance=1, description="SSIM float32 vs float64")
        ssim = ssim_float32_vs_float64()
        progress.update(bar, advance=1)
    verdicts = checks(figures, ssim)
    report(figures, ssim, verdicts, console)
    return Scenario(
        name="covers",
        checked="idle RSS, peak vs budget, SSIM, 503 under overload, scale to zero",
        passed=all(verdicts.values()),
        figure=(
            f"idle {figures['cold_idle_rss_mib']:.1f} MiB RSS, peak "
            f"{figures['peak_pss_mib']:.0f}/{figures['budget_mib']:.0f} MiB, "
            f"SSIM {ssim:.4f}"
        ),
        details={"figures": figures, "ssim": ssim},
    )


def report(
    figures: dict[str, Any], ssim: float, verdicts: dict[str, bool], console: Console
) -> None:
    table = Table(title="memwise demo covers", show_header=False)
    rows = [
        ("service ready after", f"{figures['start_s']:.2f} s"),
        (
            "cold-start idle, service process",
            f"RSS {figures['cold_idle_rss_mib']:.1f} MiB, private "
            f"{figures['cold_idle_private_mib']:.1f} MiB, heavy modules: "
            f"{', '.join(figures['cold_loaded']) or 'none'}",
        ),
        ("first request (a worker starts from zero)", f"{figures['first_request_s']:.2f} s"),
        (
            "3 concurrent renders",
            f"{figures['three_renders_s']:.2f} s, statuses {figures['three_statuses']}",
        ),
        (
            "peak during them: service + workers",
            f"PSS {figures['peak_pss_mib']:.1f} MiB, private {figures['peak_private_mib']:.1f}"
            f" MiB ({figures['peak_samples']} samples); budget {figures['budget_mib']:.0f} MiB",
        ),
        (
            "forkserver (preloads numpy; outside the budget)",
            f"{figures['peak_forkserver_mib']} MiB",
        ),
        ("overload burst: responses by status", str(figures["burst"])),
        ("bad input", f"{figures['bad_input']['status']}: {figures['bad_input']['message']}"),
        ("back to zero workers after", f"{figures['scaled_to_zero_s']} s"),
        (
            "idle again, service process",
            f"RSS {figures['idle_after_rss_mib']:.1f} MiB, private "
            f"{figures['idle_after_private_mib']:.1f} MiB, workers {figures['idle_workers']}",
        ),
        ("SSIM float32 vs float64 render", f"{ssim:.5f}"),
    ]
    tight = figures["tight"]
    refusal = tight["refusal"] or {}
    rows.insert(
        7,
        (
            f"budget {tight['budget']}: a render cannot fit",
            f"{tight['status']} after {tight['seconds']:.1f} s; Retry-After: "
            f"{refusal.get('retry_after')}; {refusal.get('message')}",
        ),
    )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for check, ok in verdicts.items():
        console.print(f"{'[green]ok' if ok else '[red]FAILED'}[/] {check}")
