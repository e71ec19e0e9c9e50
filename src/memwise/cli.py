"""The ``memwise`` command: ``demo`` and ``bench``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(
    help="Memory-bounded, crash-isolated, zero-copy multi-process work on array-heavy data.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks against peers, measured in one run; prints ratios (and JSON with --json).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
QuickOption = Annotated[bool, typer.Option("--quick", help="Smaller sizes, for a smoke run.")]
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend", help="local, or ray: memwise-on-Ray against plain Ray on a local cluster."
    ),
]


@app.command()
def demo(
    name: Annotated[
        str | None, typer.Argument(help="One scenario at full size; none: the short tour of all.")
    ] = None,
) -> None:
    """Run the seed scenarios on real data: one at full size, or all of them as a short tour."""
    from rich.console import Console
    from rich.table import Table

    from memwise import demos

    console = Console()
    names = [name] if name else list(demos.SCENARIOS)
    if name and name not in demos.SCENARIOS:
        raise typer.BadParameter(f"choose one of: {', '.join(demos.SCENARIOS)}", param_hint="NAME")
    results = []
    for scenario in names:
        console.rule(f"[bold]memwise demo {scenario}")
        results.append(demos.run(scenario, short=name is None, console=console))
    table = Table(title="memwise demo: summary")
    for column in ("scenario", "checked", "result", "key figure"):
        table.add_column(column)
    for result in results:
        verdict = "[green]pass" if result.passed else "[red]FAIL"
        table.add_row(result.name, result.checked, verdict, result.figure)
    console.print(table)
    if not all(result.passed for result in results):
        raise typer.Exit(1)


def _run_benchmark(module: str, as_json: bool, entry: str = "run", **options: object) -> None:
    import importlib

    bench = importlib.import_module(f"memwise.benchmarks.{module}")
    result = getattr(bench, entry)(**options)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        bench.print_table(result)


@bench_app.command()
def overhead(
    as_json: JsonOption = False,
    quick: QuickOption = False,
    systems: Annotated[
        list[str] | None, typer.Option("--system", help="Only these systems (repeatable).")
    ] = None,
    backend: BackendOption = "local",
) -> None:
    """Per-task overhead: submit throughput, round trip, map, CPU scaling vs peers."""
    if _ray_backend(backend):
        _run_benchmark("on_ray", as_json, "run_overhead", quick=quick)
    else:
        _run_benchmark("overhead", as_json, quick=quick, systems=systems)


@bench_app.command()
def recycle(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Recycling leaky workers by private memory: peak/final memory and throughput vs peers."""
    _run_benchmark("recycle", as_json, quick=quick)


@bench_app.command()
def transfer(
    as_json: JsonOption = False, quick: QuickOption = False, backend: BackendOption = "local"
) -> None:
    """Round trip of large arrays (48 MB, 2000x2000x3) through workers vs peers and Ray."""
    if _ray_backend(backend):
        _run_benchmark("on_ray", as_json, "run_transfer", quick=quick)
    else:
        _run_benchmark("transfer", as_json, quick=quick)


def _ray_backend(backend: str) -> bool:
    if backend not in ("local", "ray"):
        raise typer.BadParameter("choose local or ray", param_hint="--backend")
    return backend == "ray"


@bench_app.command()
def buffers(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """BufferPool lease/release vs np.zeros/np.empty; shared slot reuse vs fresh segments."""
    _run_benchmark("buffers", as_json, quick=quick)


@bench_app.command("import")
def import_(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Cost of `import memwise` over bare Python, and an idle worker's private memory."""
    _run_benchmark("imports", as_json, quick=quick)


@bench_app.command()
def isolation(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Seed 000: memory per image switch and first-preview latency, threads vs actors."""
    _run_benchmark("isolation", as_json, quick=quick)
