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


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    kill: Annotated[bool, typer.Option(help="Kill one worker mid-run on purpose.")] = True,
) -> None:
    """Grade the scikit-image sample photographs in workers, surviving a killed worker."""
    from memwise import demo as demo_module

    outcome = demo_module.run(workers=workers, kill=kill)
    if not demo_module.report(outcome):
        raise typer.Exit(1)


@bench_app.command()
def overhead(
    as_json: JsonOption = False,
    quick: QuickOption = False,
    systems: Annotated[
        list[str] | None, typer.Option("--system", help="Only these systems (repeatable).")
    ] = None,
) -> None:
    """Per-task overhead: submit throughput, round trip, map, CPU scaling vs peers."""
    from memwise.benchmarks import overhead as bench

    result = bench.run(systems=systems, quick=quick)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        bench.print_table(result)


def main() -> None:
    app()
