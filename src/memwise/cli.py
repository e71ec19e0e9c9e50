"""The ``memwise`` command: ``demo``, ``bench``, ``serve`` and ``top``."""

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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; not loopback needs a token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8000,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPUs).")] = None,
    min_workers: Annotated[
        int | None, typer.Option(help="Workers kept alive when idle (default: all).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="MEMWISE_TOKEN", help="Every request must present it."),
    ] = None,
    recycle_tasks: Annotated[
        int | None, typer.Option(help="Replace a worker after this many tasks.")
    ] = None,
    recycle_memory: Annotated[
        str | None, typer.Option(help="Replace a worker whose private memory exceeds this.")
    ] = None,
    idle: Annotated[
        float | None, typer.Option(help="Stop (or replace) workers idle this many seconds.")
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Memory budget of the pool, e.g. '4 GiB'.")
    ] = None,
) -> None:
    """Run a pool with its dashboard, JSON API and Prometheus metrics until Ctrl+C/SIGTERM."""
    import os
    import sys

    from memwise import MemoryBudget, Recycle
    from memwise.errors import ServerConfigError
    from memwise.server.run import TOKEN_ENV, resolve_token

    try:
        token = resolve_token(host, token)
        Recycle(tasks=recycle_tasks, memory=recycle_memory, idle=idle)
        if budget:
            MemoryBudget(budget)
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
    except (ServerConfigError, ValueError) as exc:
        typer.echo(f"memwise serve: {exc}", err=True)
        raise typer.Exit(2) from None
    if min_workers is not None:
        # Without --workers the pool gets one worker per usable CPU: check against that.
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        limit = workers if workers is not None else cpus
        if not 0 <= min_workers <= limit:
            raise typer.BadParameter(
                f"must be between 0 and --workers ({limit}), got {min_workers}",
                param_hint="--min-workers",
            )
    config = {
        "host": host,
        "port": port,
        "workers": workers,
        "min_workers": min_workers,
        "recycle": {"tasks": recycle_tasks, "memory": recycle_memory, "idle": idle},
        "budget": budget,
    }
    env = dict(os.environ)
    if token:
        env[TOKEN_ENV] = token
    # The server runs for hours: it becomes a lean process without the CLI's libraries.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "memwise.server", json.dumps(config)], env)


@app.command()
def top(
    url: Annotated[
        str, typer.Argument(help="A memwise server (memwise serve, or an app with create_app).")
    ] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="MEMWISE_TOKEN")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Watch a running memwise server's pool in the terminal, refreshed in place."""
    if interval <= 0:
        raise typer.BadParameter(
            f"must be more than 0 seconds, got {interval}", param_hint="--interval"
        )
    from memwise.observe.console import remote, watch

    source = remote(url, token)
    if once:
        from rich.console import Console

        from memwise.observe.console import render

        try:
            Console().print(render(source(), title=url))
        except OSError as exc:
            typer.echo(f"memwise top: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    watch(source, interval=interval, title=url)


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


@bench_app.command()
def pipeline(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """3-stage frame inspection line: memwise pipeline vs serial, mp.Queue, pypeln, mpire, spdl."""
    _run_benchmark("pipeline", as_json, quick=quick)


@bench_app.command("import")
def import_(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Cost of `import memwise` over bare Python, and an idle worker's private memory."""
    _run_benchmark("imports", as_json, quick=quick)


@bench_app.command()
def isolation(
    as_json: JsonOption = False,
    quick: QuickOption = False,
    soak: Annotated[
        bool, typer.Option("--soak", help="The seed's plan: 100 switches over 3 images.")
    ] = False,
) -> None:
    """Seed 000: memory per image switch and first-preview latency, threads vs actors."""
    _run_benchmark("isolation", as_json, quick=quick, soak=soak)


@bench_app.command("serve")
def serve_(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """The server: idle memory, /api/snapshot rate and p99, SSE fan-out CPU, dashboard cost."""
    _run_benchmark("serve", as_json, quick=quick)


@bench_app.command()
def covers(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Seed 001: the cover service's idle and peak memory, workers vs in-process renders."""
    _run_benchmark("covers", as_json, quick=quick)


@bench_app.command()
def chaos(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Faults under load: kill storms, poison tasks, a soak; tasks lost, hangs, leaks, drift."""
    _run_benchmark("chaos", as_json, quick=quick)


@bench_app.command()
def data(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """memwise.data against strax 2.2.3 on one waveform chain: cold, reload, peak memory."""
    _run_benchmark("data", as_json, quick=quick)


@bench_app.command()
def speech(as_json: JsonOption = False, quick: QuickOption = False) -> None:
    """Seed 004: recognizer throughput 1 vs 2 workers, memory ratio, RTF, a worker killed."""
    _run_benchmark("speech", as_json, quick=quick)
