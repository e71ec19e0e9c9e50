"""``memwise top``: a terminal view of a pool, refreshed in place (like htop, for one pool).

It draws the JSON form of a snapshot (``PoolSnapshot.to_dict()`` plus ``pipelines``), so the
same view shows an in-process pool (:func:`top`) or a server's ``/api/snapshot``
(:func:`remote`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from memwise.observe.stages import Pipelines, named, stage_rows

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

Source = Callable[[], Mapping[str, Any]]

STATE_STYLES = {
    "busy": "green",
    "idle": "dim",
    "starting": "yellow",
    "stopping": "yellow",
    "stopped": "red",
    "running": "green",
    "broken": "bold red",
    "closing": "yellow",
    "shut down": "red",
}


def size(n: float | None) -> str:
    """Bytes as a short human figure (binary units)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(data: Mapping[str, Any], *, title: str = "memwise") -> RenderableType:
    """One frame of the view for one snapshot (its JSON form)."""
    state = data["state"]
    head = Text.assemble(
        (f"{title}  ", "bold"),
        (state, STATE_STYLES.get(state, "")),
        (f": {data['broken_reason']}" if data.get("broken_reason") else "", "red"),
        f"   workers {sum(w['pid'] is not None for w in data['workers'])}/{data['max_workers']}",
        f"   {data['throughput']:.1f} tasks/s",
        f"   done {data['done']:,}  failed {data['failed']:,}  queued {data['queued']:,}",
        f"  in flight {data['in_flight']:,}  restarts {data['restarts']:,}",
    )
    workers = Table(expand=True, box=None, header_style="bold dim", pad_edge=False)
    for column, justify in (
        ("lane", "right"),
        ("pid", "right"),
        ("state", "left"),
        ("key", "left"),
        ("task", "left"),
        ("running", "right"),
        ("cpu", "right"),
        ("private", "right"),
        ("done", "right"),
        ("restarts", "right"),
    ):
        workers.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for w in data["workers"]:
        task = w.get("task") or {}
        cpu = w.get("cpu_percent")
        workers.add_row(
            "spare" if w["lane"] < 0 else str(w["lane"]),
            "-" if w["pid"] is None else str(w["pid"]),
            Text(w["state"], STATE_STYLES.get(w["state"], "")),
            w.get("key") or "",
            task.get("function", ""),
            f"{task['seconds']:.1f} s" if task else "",
            "-" if cpu is None else f"{cpu:.0f}%",
            size(w.get("private")),
            f"{w['tasks_done']:,}",
            Text(str(w["restarts"]), "red" if w["restarts"] else ""),
        )
    parts: list[RenderableType] = [head, workers]
    shm = data["shared_memory"]
    memory = Text(
        f"shared memory {size(shm['bytes_in_use'])} in {shm['slots_in_use']} slots, "
        f"{size(shm['bytes_free'])} warm",
        style="dim",
    )
    budget = data.get("budget")
    if budget:
        memory.append(
            f"   budget {size(budget['in_use'])} used + {size(budget['reserved'])} reserved "
            f"of {size(budget['limit'])}, {budget['waiting']} waiting"
        )
    parts.append(memory)
    stages = [(p["name"], s) for p in data.get("pipelines", ()) for s in p["stages"]]
    if stages:
        table = Table(expand=True, box=None, header_style="bold dim", pad_edge=False)
        for column in ("pipeline", "stage", "workers", "queue", "rate/s", "busy", "done", "errors"):
            table.add_column(column, no_wrap=True)
        for name, s in stages:
            table.add_row(
                name,
                s["name"],
                str(s["workers"]),
                f"{s['depth']}/{s['capacity']}",
                f"{s['rate']:.1f}",
                f"{s['busy_percent']:.0f}%",
                f"{s['done']:,}",
                str(s["errors"]),
            )
        parts.append(table)
    return Group(*parts)


def watch(
    source: Source,
    *,
    interval: float = 1.0,
    console: Console | None = None,
    title: str = "memwise",
    frames: int | None = None,
) -> None:
    """Redraw ``source()`` every ``interval`` seconds until Ctrl+C (or ``frames`` frames).

    A source that fails (server gone, pool shut down) shows the error and is tried again.
    """
    console = console or Console()
    drawn = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while frames is None or drawn < frames:
                try:
                    frame = render(source(), title=title)
                except (OSError, ValueError, KeyError) as exc:
                    frame = Text(f"{title}: cannot read the pool: {exc}", style="red")
                live.update(frame, refresh=True)
                drawn += 1
                if frames is None or drawn < frames:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass


def top(
    pool: WorkerPool, *, pipelines: Pipelines = (), interval: float = 1.0, **options: Any
) -> None:
    """Watch an in-process pool in the terminal until Ctrl+C."""
    by_name = named(pipelines)

    def source() -> dict[str, Any]:
        data = pool.snapshot().to_dict()
        data["pipelines"] = stage_rows(by_name)
        return data

    watch(source, interval=interval, **options)


def remote(url: str, token: str | None = None, timeout: float = 5.0) -> Source:
    """A source reading ``<url>/api/snapshot`` of a memwise server."""
    endpoint = url.rstrip("/") + "/api/snapshot"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No proxy, whatever $http_proxy says: the bearer token goes to the server and nowhere else.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def source() -> Mapping[str, Any]:
        request = urllib.request.Request(endpoint, headers=headers)
        try:
            with opener.open(request, timeout=timeout) as response:
                data: Mapping[str, Any] = json.load(response)
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise OSError(f"{endpoint} answered {exc.code}: {detail}") from None

    return source
