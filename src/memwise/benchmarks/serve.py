"""``memwise bench serve``: what the server costs, measured against a real ``memwise serve``.

- idle memory of ``memwise serve --min-workers 0`` once it listens (seed 001 wants a web service
  idling at <= 30 MB): RSS of the server process, its private memory, and the PSS of the whole
  tree (the forkserver that starts workers included);
- ``/api/snapshot`` requests per second and latency percentiles, from 4 keep-alive clients;
- server CPU while 50 event-stream clients receive snapshots at 2 Hz, next to the same server
  with no client over the same time;
- the cost of a subscribed dashboard on the per-task overhead: no-op tasks submitted in bursts
  to a 2-worker pool, alternately with and without a server in this process streaming the
  dashboard's events to a client (best of N each, so noise only ever slows a side down).

The load is bounded in count and time, and only ever on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import psutil
from rich.console import Console
from rich.table import Table

from memwise.benchmarks._harness import best_time
from memwise.benchmarks._tasks import noop
from memwise.memory import usage, usage_tree

MB = 1_000_000
MiB = 1024 * 1024
IDLE_RSS_TARGET_MB = 30.0
OVERHEAD_TARGET_PERCENT = 5.0
FANOUT_CLIENTS = 50
START_TIMEOUT_S = 120.0
# The event kinds the dashboard page asks for (see server/static/dashboard.js).
DASHBOARD_KINDS = (
    "worker_died,worker_recycled,worker_replaced,task_timed_out,task_failed,task_retried,"
    "pool_resized,pool_broken,pool_shutdown"
)


@dataclass(frozen=True)
class Sizes:
    settle_s: float  # idle time before the memory reading
    requests: int  # /api/snapshot requests at most ...
    request_s: float  # ... or this many seconds
    fanout_s: float  # seconds the 50 streams are measured
    tasks: int  # no-op tasks per burst
    rounds: int  # bursts per side, alternating


FULL = Sizes(settle_s=3.0, requests=4000, request_s=10.0, fanout_s=10.0, tasks=5000, rounds=5)
QUICK = Sizes(settle_s=1.0, requests=400, request_s=3.0, fanout_s=3.0, tasks=1000, rounds=3)


class Target(TypedDict):
    value: float
    target: str
    met: bool


class ServeResult(TypedDict):
    benchmark: str
    results: dict[str, dict[str, float]]
    targets: dict[str, Target]


def run(quick: bool = False) -> ServeResult:
    sizes = QUICK if quick else FULL
    results: dict[str, dict[str, float]] = {}
    with _memwise_serve("--min-workers", "0", "--workers", "2") as (process, _url):
        time.sleep(sizes.settle_s)  # let start-up garbage be collected and lazy imports settle
        results["idle"] = _idle_memory(process.pid)
    with _memwise_serve("--workers", "2") as (process, url):
        results["snapshot_api"] = _snapshot_rate(process.pid, url, sizes)
        results["fanout"] = _fanout(process.pid, url, sizes)
    results["dashboard_overhead"] = _dashboard_overhead(sizes)
    idle_mb = results["idle"]["server_rss_mb"]
    overhead = results["dashboard_overhead"]["overhead_percent"]
    return {
        "benchmark": "serve",
        "results": results,
        "targets": {
            "idle RSS of memwise serve --min-workers 0, MB": {
                "value": idle_mb,
                "target": f"<= {IDLE_RSS_TARGET_MB:g} MB",
                "met": idle_mb <= IDLE_RSS_TARGET_MB,
            },
            "subscribed dashboard overhead on task submission, %": {
                "value": overhead,
                "target": f"<= {OVERHEAD_TARGET_PERCENT:g} %",
                "met": overhead <= OVERHEAD_TARGET_PERCENT,
            },
        },
    }


# --------------------------------------------------------------------------------------------
# A real `memwise serve`
# --------------------------------------------------------------------------------------------


@contextmanager
def _memwise_serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = Path(sys.executable).with_name("memwise")
    process = subprocess.Popen(
        [str(command), "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _readline(process, START_TIMEOUT_S)
        if "dashboard on " not in line:
            raise RuntimeError(f"memwise serve did not start: {line!r}")
        yield process, line.split("dashboard on ", 1)[1].split()[0]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _idle_memory(pid: int) -> dict[str, float]:
    server = usage(pid)
    tree = usage_tree(pid)
    others = [u for child, u in tree.items() if child != pid]
    return {
        "server_rss_mb": server.rss / MB,
        "server_private_mb": server.private / MB,
        "server_pss_mb": (server.pss or 0) / MB,
        "tree_pss_mb": sum(u.pss or 0 for u in tree.values()) / MB,
        "helper_processes": float(len(others)),
        "helpers_private_mb": sum(u.private for u in others) / MB,
    }


# --------------------------------------------------------------------------------------------
# /api/snapshot under load
# --------------------------------------------------------------------------------------------


def _snapshot_rate(pid: int, url: str, sizes: Sizes, clients: int = 4) -> dict[str, float]:
    server = psutil.Process(pid)
    host, port = _address(url)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_client = sizes.requests // clients
    deadline = time.monotonic() + sizes.request_s

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        failed = 0
        try:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    break
                start = time.perf_counter()
                conn.request("GET", "/api/snapshot")
                response = conn.getresponse()
                response.read()
                mine.append(time.perf_counter() - start)
                failed += response.status != 200
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                errors += failed

    cpu_before = _cpu_seconds(server)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds(server) - cpu_before
    latencies.sort()
    return {
        "requests": float(len(latencies)),
        "errors": float(errors),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        # What a request costs the server, whatever else the machine is doing.
        "server_cpu_ms_per_request": 1000 * cpu / max(1, len(latencies)),
    }


# --------------------------------------------------------------------------------------------
# Event streams to many clients
# --------------------------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _fanout(pid: int, url: str, sizes: Sizes) -> dict[str, float]:
    server = psutil.Process(pid)
    before = _cpu_seconds(server)
    time.sleep(sizes.fanout_s)
    idle_percent = 100 * (_cpu_seconds(server) - before) / sizes.fanout_s

    address = _address(url)
    stop = threading.Event()
    counts = [0] * FANOUT_CLIENTS
    sockets = []
    refused = 0
    for _ in range(FANOUT_CLIENTS):
        sock = socket.create_connection(address, timeout=30)
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        if not sock.recv(1 << 16).startswith(b"HTTP/1.1 200"):
            refused += 1
        sockets.append(sock)

    def read(index: int) -> None:
        sock = sockets[index]
        sock.settimeout(0.5)
        while not stop.is_set():
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            counts[index] += chunk.count(b"event: snapshot")

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(sockets))]
    for reader in readers:
        reader.start()
    time.sleep(1.0)  # every stream open and past its first snapshot
    start_counts = sum(counts)
    before = _cpu_seconds(server)
    time.sleep(sizes.fanout_s)
    busy_percent = 100 * (_cpu_seconds(server) - before) / sizes.fanout_s
    received = sum(counts) - start_counts
    stop.set()
    for reader in readers:
        reader.join()
    for sock in sockets:
        sock.close()
    return {
        "clients": float(FANOUT_CLIENTS),
        "refused": float(refused),
        "server_cpu_percent": busy_percent,
        "server_cpu_percent_no_clients": idle_percent,
        "snapshots_per_client_per_s": received / FANOUT_CLIENTS / sizes.fanout_s,
    }


# --------------------------------------------------------------------------------------------
# A subscribed dashboard's cost on the pool
# --------------------------------------------------------------------------------------------


def _dashboard_overhead(sizes: Sizes) -> dict[str, float]:
    from memwise import WorkerPool
    from memwise.server import serving

    def burst(pool: WorkerPool) -> Callable[[], None]:
        def submit_all() -> None:
            for future in [pool.submit(noop) for _ in range(sizes.tasks)]:
                future.result(timeout=300)

        return submit_all

    plain: list[float] = []
    watched: list[float] = []
    with WorkerPool(2) as pool:
        burst(pool)()  # warm up: workers started, code paths hot
        for _ in range(sizes.rounds):
            plain.append(best_time(burst(pool), 1))
            with serving(pool) as url, _dashboard_client(url):
                watched.append(best_time(burst(pool), 1))
    plain_rate = sizes.tasks / min(plain)
    watched_rate = sizes.tasks / min(watched)
    return {
        "plain_tasks_per_s": plain_rate,
        "with_dashboard_tasks_per_s": watched_rate,
        "overhead_percent": max(0.0, 100 * (plain_rate / watched_rate - 1)),
    }


@contextmanager
def _dashboard_client(url: str) -> Iterator[None]:
    """An event stream like the dashboard page's, read as it arrives."""
    sock = socket.create_connection(_address(url), timeout=30)
    sock.sendall(
        f"GET /api/events?kinds={DASHBOARD_KINDS} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )
    first = sock.recv(1 << 16)
    if not first.startswith(b"HTTP/1.1 200"):
        sock.close()
        raise RuntimeError(f"the event stream was refused: {first[:200]!r}")
    stop = threading.Event()

    def read() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                if not sock.recv(1 << 16):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()
        sock.close()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_table(result: ServeResult, console: Console | None = None) -> None:
    console = console or Console()
    r = result["results"]
    table = Table(title="serve benchmark")
    table.add_column("measurement")
    table.add_column("figure", justify="right")
    idle, api, fan, dash = r["idle"], r["snapshot_api"], r["fanout"], r["dashboard_overhead"]
    rows = [
        ("idle server RSS (memwise serve --min-workers 0)", f"{idle['server_rss_mb']:.1f} MB"),
        ("idle server private memory", f"{idle['server_private_mb']:.1f} MB"),
        (
            f"idle tree PSS ({idle['helper_processes']:.0f} helper processes)",
            f"{idle['tree_pss_mb']:.1f} MB",
        ),
        ("/api/snapshot requests/s (4 keep-alive clients)", f"{api['requests_per_s']:,.0f}"),
        ("/api/snapshot latency p50 / p99", f"{api['p50_ms']:.1f} / {api['p99_ms']:.1f} ms"),
        ("/api/snapshot server CPU per request", f"{api['server_cpu_ms_per_request']:.2f} ms"),
        ("/api/snapshot errors", f"{api['errors']:.0f} of {api['requests']:.0f}"),
        (
            f"server CPU, {fan['clients']:.0f} event streams at 2 Hz",
            f"{fan['server_cpu_percent']:.1f} %",
        ),
        ("server CPU, no client", f"{fan['server_cpu_percent_no_clients']:.1f} %"),
        ("event streams refused", f"{fan['refused']:.0f}"),
        ("snapshots per client per second", f"{fan['snapshots_per_client_per_s']:.2f}"),
        ("no-op submit rate, no dashboard", f"{dash['plain_tasks_per_s']:,.0f} /s"),
        ("no-op submit rate, dashboard streaming", f"{dash['with_dashboard_tasks_per_s']:,.0f} /s"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"{mark} {name}: {target['value']:,.1f} (target {target['target']})")


__all__ = ["print_table", "run"]
