"""``memwise demo preview``: a film-negative grading preview, one actor process per image.

Seed 000's application scans film: each photograph is a 16-bit negative under the film's
orange mask, held as a 2000x2000 float32 proxy, and every slider move renders a preview
through a grading chain that allocates large temporaries. Rendered in the application's own
threads, that heap need not shrink again; the remedy is a process per image, ended when the
user moves on, so everything it allocated goes back to the OS.

The scripted session, on real photographs from scikit-image: for every image switch, a first
preview, then a slider drag (ten requests in quick succession; latest wins, so only the newest
waiting one is rendered); one actor SIGKILLed in the middle of a preview (the preview still
arrives, from a restarted process); one render that hangs (the call's timeout fires, the actor
is replaced, the next preview arrives). The same session then runs with ``isolation="never"``
(threads of this process) for comparison. The proxies live in shared memory and travel to the
actors as handles; at exit nothing of this process is left in /dev/shm.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memwise import shared
from memwise.actors import Actor, spawn
from memwise.demos import Scenario
from memwise.demos.negative import DENSITY_RANGE, DRAG, ORANGE_MASK, NegativePreview, slider
from memwise.demos.samples import load_rgb
from memwise.errors import TaskTimeout
from memwise.memory import private_memory_of, trim
from memwise.sessions import Sessions

PROXY_SIDE = 2000
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HANG_TIMEOUT = 1.0  # the preview's time limit; the hanging render takes three times that
MiB = 1024 * 1024
# Growth is measured after these switches: until then the LRU fills up and the allocator of
# this process sets up its arenas (a one-off cost, not growth).
WARMUP_SWITCHES = 2
MAX_GROWTH_MIB_PER_SWITCH = 1.0


def film_negative(name: str) -> Any:
    """A scikit-image photograph as a scanned 16-bit colour negative under the orange mask."""
    import numpy as np

    photo = load_rgb(name).astype(np.float32) / 255.0
    density = DENSITY_RANGE * photo  # bright scene, dense negative
    transmittance = np.asarray(ORANGE_MASK, dtype=np.float32) * 10.0 ** (-density)
    return np.round(transmittance * 65535.0).astype(np.uint16)


def proxy_of(negative: Any) -> Any:
    """The 2000x2000 float32 proxy of a negative, in shared memory (nearest neighbour)."""
    import numpy as np

    rows = np.arange(PROXY_SIDE) * negative.shape[0] // PROXY_SIDE
    cols = np.arange(PROXY_SIDE) * negative.shape[1] // PROXY_SIDE
    proxy = shared.empty((PROXY_SIDE, PROXY_SIDE, 3), np.float32)
    np.divide(negative[rows][:, cols], np.float32(65535.0), out=proxy, dtype=np.float32)
    proxy.flags.writeable = False
    return proxy


@dataclass
class Session:
    """What one scripted session measured."""

    isolation: str
    switch_ms: list[float] = field(default_factory=list)
    app_mib: list[float] = field(default_factory=list)
    workers_mib: list[float] = field(default_factory=list)
    requested: int = 0
    rendered: int = 0
    drags_complete: int = 0
    killed: str = "n/a"
    hang: str = "not tried"
    failures: list[str] = field(default_factory=list)

    @property
    def app_growth(self) -> float:
        return _slope(self.app_mib[WARMUP_SWITCHES:])


def _slope(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    return statistics.linear_regression(range(len(values)), values).slope


def run_session(
    isolation: str, proxies: dict[str, Any], switches: int, advance: Any = None
) -> Session:
    """The scripted session with ``isolation`` ("auto" for processes, "never" for threads)."""
    names = list(proxies)
    session = Session(isolation)
    opened: list[Actor] = []

    def open_image(name: str) -> Actor:
        actor = spawn(NegativePreview, isolation=isolation, restarts=10)  # type: ignore[arg-type]
        opened.append(actor)
        return actor

    kill_at = switches // 3
    hang_at = (2 * switches) // 3
    with Sessions(open_image, keep=2) as sessions:
        for index in range(switches):
            name = names[index % len(names)]
            proxy = proxies[name]
            started = time.perf_counter()
            actor = sessions[name]
            actor.latest("render", proxy, slider(0)).result()
            session.switch_ms.append((time.perf_counter() - started) * 1e3)
            _drag(session, actor, proxy, kill=index == kill_at)
            if index == hang_at:
                _hang(session, actor, proxy)
            trim()  # as the application would after a switch: what stays is really held
            session.app_mib.append(private_memory_of([os.getpid()]) / MiB)
            pids = [actor.pid for actor in opened]
            session.workers_mib.append(
                private_memory_of(pid for pid in pids if pid is not None) / MiB
            )
            if advance is not None:
                advance()
    return session


def _drag(session: Session, actor: Actor, proxy: Any, kill: bool) -> None:
    """Ten requests in quick succession; the newest must arrive, the others may be dropped."""
    futures = [actor.latest("render", proxy, slider(step)) for step in range(1, DRAG + 1)]
    session.requested += len(futures)
    if kill and actor.isolation == "process":
        time.sleep(0.05)  # a render is under way
        pid = actor.pid
        restarts = actor.restarts
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            futures[-1].exception()
            session.killed = (
                f"pid {pid} SIGKILLed mid-preview; preview arrived, "
                f"{actor.restarts - restarts} restart"
            )
    try:
        futures[-1].result()
        session.drags_complete += 1
    except Exception as exc:
        session.failures.append(f"drag: {exc!r}")
    session.rendered += sum(1 for f in futures if not f.cancelled() and f.exception() is None)


def _hang(session: Session, actor: Actor, proxy: Any) -> None:
    """A render that hangs: the timeout fires, the actor is replaced, previews go on."""
    restarts = actor.restarts
    stuck = actor.options(timeout=HANG_TIMEOUT).latest(
        "render", proxy, slider(DRAG), hang=3 * HANG_TIMEOUT
    )
    try:
        stuck.result()
        session.failures.append("the hanging render did not time out")
        return
    except TaskTimeout:
        pass
    try:
        actor.latest("render", proxy, slider(DRAG)).result()
    except Exception as exc:
        session.failures.append(f"preview after the hang: {exc!r}")
        return
    session.hang = (
        f"timed out after {HANG_TIMEOUT:g} s; object replaced "
        f"({actor.restarts - restarts} restart), next preview arrived"
    )


@contextmanager
def sample_proxies(names: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Proxies of the sample negatives in shared memory, released (and unlinked) at the end."""
    proxies = {name: proxy_of(film_negative(name)) for name in names}
    try:
        yield proxies
    finally:
        for proxy in proxies.values():
            shared.release(proxy)
        proxies.clear()
        shared.trim()


def run(*, short: bool, console: Console) -> Scenario:
    """Both sessions (processes, then threads), the comparison table and the checks."""
    switches = 5 if short else 20
    names = PHOTOS[:3] if short else PHOTOS
    console.print(
        f"{len(names)} scikit-image photographs as 16-bit negatives under an orange mask; "
        f"2000x2000 float32 proxies in shared memory; {switches} switches, Sessions(keep=2)"
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with sample_proxies(names) as proxies, progress:
        bar = progress.add_task("image switches", total=2 * switches)
        sessions = [
            run_session(mode, proxies, switches, lambda: progress.advance(bar))
            for mode in ("auto", "never")
        ]
    left = shared.owned_segments()
    return report(sessions, left, console, gate_growth=not short)


def report(
    sessions: list[Session], left: list[str] | None, console: Console, *, gate_growth: bool
) -> Scenario:
    """Print memory per switch, latencies and checks; the scenario's verdict.

    ``gate_growth``: whether growth per switch decides the verdict. A short session has too
    few switches after warm-up (where the actor restarts of the kill and the hang fall) for a
    slope of a few points to separate growth from noise; it is then reported, not judged.
    """
    """Print memory per switch, latencies and checks; the scenario's verdict."""
    processes, threads = sessions
    table = Table(title="private memory after each switch, MiB")
    for column in ("switch", "processes: app", "processes: actors", "threads: app"):
        table.add_column(column, justify="right")
    for index, row in enumerate(
        zip(processes.app_mib, processes.workers_mib, threads.app_mib, strict=True)
    ):
        table.add_row(str(index + 1), *(f"{value:,.1f}" for value in row))
    console.print(table)
    summary = Table(title="memwise demo preview", show_header=True)
    for column in ("", "processes (auto)", "threads (never)"):
        summary.add_column(column)

    def both(fn: Any) -> tuple[str, str]:
        return fn(processes), fn(threads)

    summary.add_row(
        "switch to first preview, median ms",
        *both(lambda s: f"{statistics.median(s.switch_ms):,.0f}"),
    )
    summary.add_row("previews rendered / requested", *both(lambda s: f"{s.rendered}/{s.requested}"))
    summary.add_row(
        "app growth per switch (after warm-up)", *both(lambda s: f"{s.app_growth:+.2f} MiB")
    )
    summary.add_row("app private memory at the end", *both(lambda s: f"{s.app_mib[-1]:,.1f} MiB"))
    summary.add_row("actor killed", *both(lambda s: s.killed))
    summary.add_row("hanging render", *both(lambda s: s.hang))
    shm = "not listable here" if left is None else (", ".join(left) or "empty")
    summary.add_row("/dev/shm segments of this process at exit", shm, "")
    console.print(summary)
    checks = {
        "every drag's newest preview arrived": all(
            s.drags_complete == len(s.switch_ms) and not s.failures for s in sessions
        ),
        "killed actor's preview arrived": processes.killed.startswith("pid"),
        "hanging render timed out, actor replaced": all(
            s.hang.startswith("timed out") for s in sessions
        ),
        "/dev/shm empty at exit": not left,
    }
    if gate_growth:
        checks[f"processes: app growth <= {MAX_GROWTH_MIB_PER_SWITCH:g} MiB/switch"] = (
            processes.app_growth <= MAX_GROWTH_MIB_PER_SWITCH
        )
    else:
        console.print(
            "growth per switch is judged at full size (memwise demo preview: 20 switches)"
        )
    for session in sessions:
        for failure in session.failures:
            console.print(f"[red]{session.isolation}: {failure}")
    for check, ok in checks.items():
        console.print(f"{'[green]ok' if ok else '[red]FAILED'}[/] {check}")
    return Scenario(
        name="preview",
        checked=f"{processes.rendered}/{processes.requested} rendered, kill + hang survived",
        passed=all(checks.values()),
        figure=(
            f"switch {statistics.median(processes.switch_ms):,.0f} ms, app "
            f"{processes.app_growth:+.2f} vs {threads.app_growth:+.2f} MiB/switch"
        ),
        details={"checks": checks},
    )
