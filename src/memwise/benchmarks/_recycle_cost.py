"""What CPU a pool's processes spend, and what one recycle costs at the least.

Two measurements for ``memwise bench recycle``:

- :func:`tree_cpu` snapshots the CPU time of this process and every process below it, the
  ones already reaped included (through their reaper's children times), so that the CPU a whole
  pool spends over an interval is ``cpu_between(before, after)``, whichever library it is.
- :func:`recycle_floor` measures the two costs every replacement of a worker pays, whatever the
  pool: starting a process (a fork from memwise's forkserver, which holds numpy, and the child's
  start-up until it runs its function) and the exit of a process that holds the heap a recycled
  worker holds (the kernel unmapping its pages).

Sources, all CPU time rather than wall-clock: ``getrusage`` for this process and its reaped
children (microseconds), ``/proc/<pid>/task/*/schedstat`` for a live process's threads
(nanoseconds), and the children times of ``/proc/<pid>/stat`` for what a descendant reaped
(clock ticks, so each reading is within one tick, 10 ms on Linux, of the truth).
"""

from __future__ import annotations

import os
import resource
from typing import Any

Figures = dict[str, float]

__all__ = ["cpu_between", "recycle_bound", "recycle_floor", "spare_cpu", "tree_cpu"]

_TICK = 1 / os.sysconf("SC_CLK_TCK")


def tree_cpu() -> dict[int, float]:
    """CPU seconds so far of this process and each descendant, each with what it has reaped."""
    import psutil

    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {os.getpid(): me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime}
    for child in psutil.Process().children(recursive=True):
        try:
            cpu[child.pid] = _process_cpu(child.pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass  # exited between the listing and the reading: its reaper counts it
    return cpu


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the process tree spent between two :func:`tree_cpu` snapshots.

    A process gone by ``after`` was reaped by one of the tree (the forkserver, or this
    process), whose children times hold its whole life: only its share before ``before``,
    counted there, is taken off.
    """
    return sum(after.values()) - sum(before.values())


def spare_cpu() -> float:
    """CPU seconds so far the machine's cores spent idle or on niced processes (``/proc/stat``).

    Over an interval, that is CPU a pool running at normal priority could have had beyond what
    it used; other processes at normal priority keep theirs.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait ...
    return (int(fields[2]) + int(fields[4]) + int(fields[5])) * _TICK


def _process_cpu(pid: int) -> float:
    return _own_cpu(pid) + _reaped_cpu(pid)


def _own_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s live threads (nanosecond counts)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that just ended
    return total / 1e9


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of the children ``pid`` has reaped (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name (which may hold spaces); cutime and cstime are 14, 15.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) * _TICK


def recycle_floor(ctx: Any, heap_bytes: int, piece_bytes: int, rounds: int = 5) -> dict[str, float]:
    """The least CPU one replacement of a worker costs here, in milliseconds (the least of
    ``rounds``: noise only ever adds CPU).

    ``start_ms``: the fork by the server that starts ``ctx``'s processes (memwise's
    forkserver, which holds numpy) plus the child's CPU until its function runs. ``exit_ms``:
    the exit of a process holding ``heap_bytes`` leaked in ``piece_bytes`` pieces, as the
    benchmark's tasks leak them: a fork of such a child, reaped with ``wait4``, whose whole
    life's CPU less what it had spent before it exited.
    """
    server = _server_of(ctx)
    starts, exits = [], []
    for _ in range(rounds):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_floor_child, args=(send, heap_bytes, piece_bytes))
        # The server's own CPU for this child: the fork, and reaping it.
        server_before = _own_cpu(server)
        process.start()
        send.close()
        start, exit_ = receive.recv()
        process.join()
        receive.close()
        starts.append(start + _own_cpu(server) - server_before)
        exits.append(exit_)
    return {"start_ms": min(starts) * 1e3, "exit_ms": min(exits) * 1e3}


def _server_of(ctx: Any) -> int:
    """The pid of the process that forks ``ctx``'s processes (the forkserver)."""
    from memwise.pool.context import forget_main_hint

    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_report_parent, args=(send,))
    try:
        process.start()
    finally:
        forget_main_hint()  # as memwise does once a process started: the server has read it
    send.close()
    server: int = receive.recv()
    process.join()
    receive.close()
    return server


def _report_parent(send: Any) -> None:
    send.send(os.getppid())


def _floor_child(send: Any, heap_bytes: int, piece_bytes: int) -> None:
    """Report (CPU until now, exit CPU of a fork of this process holding ``heap_bytes``)."""
    start = _rusage_self()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the process whose exit is measured: leak, say what that cost, exit
        from memwise.benchmarks._tasks import retain

        for _ in range(heap_bytes // piece_bytes):
            retain(piece_bytes)
        os.write(write_end, repr(_rusage_self()).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        before_exit = float(f.read())
    _, _, usage = os.wait4(pid, 0)
    send.send((start, usage.ru_utime + usage.ru_stime - before_exit))


def _rusage_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recycle_bound(
    results: dict[str, Figures], subject: str, reference: str, tasks: int, floor: dict[str, float]
) -> dict[str, float]:
    """The most throughput, relative to the pool that does not recycle (``reference``), that a
    pool recycling as often as ``subject`` did could keep on this machine, and its parts.

    Without recycling, a task costs ``task_cpu_ms`` of CPU, every process of the run counted
    (the pool's and the benchmark's sampler). A recycle adds at least ``recycle_floor_ms``
    (:func:`recycle_floor`: a process started, one holding the recycled heap exiting). The
    recycling run's time is at least its CPU over the cores it can have, so its throughput
    relative to the unrecycled run is at most ``cpu_share_bound = task_cpu / (task_cpu +
    recycles_per_task * recycle_floor)`` when the unrecycled run had every core it could get
    (none idle or running niced processes), and ``ratio_bound`` (never above 1) in any case:
    that share times the cores the unrecycled run used plus those it left spare, over the
    cores it used. ``<system>_vs_bound`` divides each system's throughput by the unrecycled
    throughput times the bound at that system's own recycle rate; ``<subject>_recycle_cpu_ms``
    is what one recycle cost ``subject`` in all, from the two runs' CPU.
    """
    mine, unrecycled = results[subject], results[reference]
    floor_ms = floor["start_ms"] + floor["exit_ms"]
    task_ms = unrecycled["cpu_ms_per_task"] + unrecycled["sampler_cpu_ms_per_task"]
    used = unrecycled["cores_used"]
    slack = (used + unrecycled["cores_spare"]) / used

    def share(recycles: float) -> float:
        return task_ms / (task_ms + recycles / tasks * floor_ms)

    bound = {
        "cores": float(os.cpu_count() or 1),
        "cores_used_norecycle": used,
        "cores_spare_norecycle": unrecycled["cores_spare"],
        "task_cpu_ms": task_ms,
        "recycle_floor_start_ms": floor["start_ms"],
        "recycle_floor_exit_ms": floor["exit_ms"],
        "recycle_floor_ms": floor_ms,
        "recycles_per_task": mine["recycles"] / tasks,
        "recycle_floor_per_task_ms": mine["recycles"] / tasks * floor_ms,
        "cpu_share_bound": share(mine["recycles"]),
        "ratio_bound": min(1.0, slack * share(mine["recycles"])),
    }
    if mine["recycles"]:
        extra = mine["cpu_ms_per_task"] - unrecycled["cpu_ms_per_task"]
        bound[f"{subject}_recycle_cpu_ms"] = extra * tasks / mine["recycles"]
    for name, figures in results.items():
        if name != reference:
            reachable = unrecycled["tasks_per_s"] * min(1.0, slack * share(figures["recycles"]))
            bound[f"{name}_vs_bound"] = figures["tasks_per_s"] / reachable
    return bound
