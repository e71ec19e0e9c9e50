"""Memory probes and the knobs that give memory back to the operating system.

memwise bounds memory by *measuring* it, so the measures have to be the right ones:

* **private** memory (Linux ``RssAnon``, psutil USS elsewhere) is what a process owns alone and
  what comes back when it exits. Recycling decisions use it.
* **RSS** also counts pages shared with others: shared-memory slots mapped by every worker, shared
  libraries, the copy-on-write image inherited from a fork server. Summing RSS over workers counts
  those pages once per worker, so memwise never budgets on RSS.
* **PSS** splits every shared page evenly between the processes mapping it, so PSS values add up
  to a true total. It is the fair figure to report, but costs more to read.

On Linux everything is read straight from ``/proc``: a pool supervisor probes each worker after
every task, and a psutil call costs several times more than one ``os.read``. psutil is imported
lazily, only off Linux or to walk a process tree, so importing this module stays cheap and never
pulls in numpy or psutil.
"""

from __future__ import annotations

import functools
import mmap
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "PeakProbe",
    "SystemMemory",
    "Usage",
    "format_size",
    "parse_size",
    "private_memory",
    "system",
    "total_private",
    "trim",
    "usage",
    "usage_tree",
]

_LINUX = sys.platform.startswith("linux")

# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def _unit_table() -> dict[str, int]:
    units = {"": 1, "b": 1}
    for power, prefix in enumerate("kmgt", start=1):
        # Bare "K"/"M" mean binary because that is what people mean by "512k" or "4G" (ulimit,
        # docker, JVM flags); only an explicit "kB"/"MB" asks for powers of 1000. "Mi" is the
        # Kubernetes spelling.
        for suffix in ("", "i", "ib"):
            units[prefix + suffix] = 1024**power
        units[prefix + "b"] = 1000**power
    return units


_UNITS = _unit_table()
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_ACCEPTED = (
    "a byte count (int), a string such as '4 GiB', '600 MiB', '1.5GB' or '512k' "
    "(KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024, kB/MB/GB/TB powers of 1000), "
    "or a float fraction 0 < f <= 1 of total memory"
)


def parse_size(value: int | float | str, *, total: int | None = None) -> int:
    """Return a number of bytes given as an int, a size string or a fraction of memory.

    Limits come from users, config files and environment variables, so one parser accepts every
    spelling people write and rejects anything ambiguous with a message naming what was given
    and what is accepted, rather than silently reading "0.5" as half a byte.

    Args:
        value: bytes as an int; a string with an optional unit ("4 GiB", "1.5GB", "512k",
            case-insensitive, spaces allowed; binary IEC units and bare K/M/G/T are powers of
            1024, SI kB/MB/GB/TB powers of 1000); or a float ``0 < f <= 1`` meaning that
            fraction of ``total``.
        total: what a fraction is a fraction of; defaults to the memory available right now
            (``system().available``), which is what a new limit can actually use.

    Raises:
        ValueError: negative, malformed, unknown unit, fractional bytes, or a float outside
            ``(0, 1]``.
        TypeError: anything that is not an int, float or str (bools included: ``True`` bytes
            is a bug, not a size).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"size must be {_ACCEPTED}; got {value!r} ({type(value).__name__})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must be >= 0; got {value!r}. Accepted: {_ACCEPTED}")
        return value
    if isinstance(value, float):
        # A float is only ever a fraction: "2.0" bytes of memory is never meant literally.
        if not 0.0 < value <= 1.0:  # also rejects NaN
            raise ValueError(
                f"a float size is a fraction of memory and must be in (0, 1]; got {value!r}. "
                f"Accepted: {_ACCEPTED}"
            )
        base = system().available if total is None else total
        return int(base * value)
    return _parse_size_string(value)


def _parse_size_string(text: str) -> int:
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size. Accepted: {_ACCEPTED}")
    number = match.group(1)
    if "." not in number:
        return int(number) * _UNITS[unit]  # exact, even beyond float precision
    if _UNITS[unit] == 1:
        raise ValueError(
            f"{text!r} is a fractional number of bytes; add a unit ('{number} GiB') or pass a "
            f"float for a fraction of memory. Accepted: {_ACCEPTED}"
        )
    return int(float(number) * _UNITS[unit])


_FORMAT_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(n: int) -> str:
    """Return ``n`` bytes in binary units for people to read, e.g. ``"48.0 MiB"``.

    Binary units, because page sizes, /proc and allocators all count in powers of 1024, and a
    figure in MiB can be pasted back into :func:`parse_size`. Negative values (deltas) keep
    their sign.
    """
    sign, size = ("-" if n < 0 else ""), abs(n)
    if size < 1024:
        return f"{sign}{size} B"
    power = 1
    # Move up a unit when rounding would print "1024.0 KiB".
    while power < len(_FORMAT_UNITS) - 1 and round(size / 1024**power, 1) >= 1024:
        power += 1
    return f"{sign}{size / 1024**power:.1f} {_FORMAT_UNITS[power]}"


# --------------------------------------------------------------------------------------------
# Per-process usage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Memory of one process, in bytes, measured at one moment.

    Attributes:
        pid: the process measured.
        private: memory only this process holds (Linux ``RssAnon``; psutil USS elsewhere); what
            its exit would give back. On Linux, pages a fork child still shares copy-on-write
            with its parent count as private in both, so use ``pss`` for a fair sum.
        pss: proportional set size: each shared page divided among its sharers, so PSS values
            add up across processes. Linux only (``/proc/<pid>/smaps_rollup``); None elsewhere,
            when not requested, or when the process belongs to another user.
        rss: resident set size; includes shared pages, so never sum it over processes.
        shared: resident pages shared or shareable with other processes (Linux
            ``RssShmem + RssFile``: shared-memory slots and mapped files; ``rss - uss``
            elsewhere).
    """

    pid: int
    private: int
    pss: int | None
    rss: int
    shared: int | None


def _read(path: str) -> bytes:
    """Return the whole of a small /proc file.

    Raw ``os.open``/``os.read`` instead of ``open()`` halves the cost (no buffered-IO objects).
    The files read here (statm, smaps_rollup, meminfo) are seq_files of at most a few hundred
    bytes to 2 KiB that the kernel renders whole, so one read returns all of it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def _read_proc(pid: int, name: str) -> bytes:
    """Return ``/proc/<pid>/<name>``, raising ProcessLookupError if the process is gone."""
    try:
        return _read(f"/proc/{pid}/{name}")
    except FileNotFoundError:
        raise ProcessLookupError(f"no process with pid {pid}") from None


def _statm(pid: int) -> tuple[int, int]:
    """Return the resident and shared bytes of process ``pid`` from ``/proc/<pid>/statm``.

    statm shows the same kernel counters as the ``Rss*`` lines of ``status`` (resident = anon +
    file + shmem pages, shared = file + shmem pages), so resident - shared is exactly
    ``RssAnon``; but the kernel renders seven numbers instead of fifty lines, which halves the
    cost of the probe.
    """
    fields = _read_proc(pid, "statm").split()
    resident = int(fields[1]) * mmap.PAGESIZE
    if resident == 0:
        # Zombies (exited, not yet reaped) and kernel threads have no memory map: all zeros.
        raise ProcessLookupError(f"process {pid} has exited")
    return resident, int(fields[2]) * mmap.PAGESIZE


def _linux_pss(pid: int) -> int | None:
    try:
        rollup = _read_proc(pid, "smaps_rollup")
    except (ProcessLookupError, PermissionError):
        # Exited since statm was read, or another user's process (smaps needs ptrace rights):
        # the statm figures are still a valid snapshot.
        return None
    start = rollup.find(b"\nPss:")  # the newline keeps "SwapPss:" from matching
    if start < 0:  # exited since statm was read: the file is empty
        return None
    start += len(b"\nPss:")
    return int(rollup[start : rollup.index(b"kB", start)]) * 1024


def _linux_usage(pid: int, pss: bool) -> Usage:
    resident, shared = _statm(pid)
    return Usage(
        pid=pid,
        private=resident - shared,
        pss=_linux_pss(pid) if pss else None,
        rss=resident,
        shared=shared,
    )


def _psutil_usage(pid: int) -> Usage:
    import psutil

    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    except psutil.AccessDenied:
        raise PermissionError(f"not allowed to read the memory of process {pid}") from None
    return Usage(pid=pid, private=info.uss, pss=None, rss=info.rss, shared=info.rss - info.uss)


def usage(pid: int | None = None, *, pss: bool = True) -> Usage:
    """Return the memory of process ``pid`` (default: this process).

    On Linux this reads ``/proc/<pid>/statm`` (~5 µs) and, for ``pss``,
    ``/proc/<pid>/smaps_rollup``. The latter makes the kernel walk the page tables: about
    0.2 ms for a small Python process but several ms for one holding GiBs in 4 KiB pages. Pass
    ``pss=False`` in loops, or use :func:`private_memory` when that is all you need.

    Raises:
        ProcessLookupError: the process does not exist or has exited (including zombies).
        PermissionError: off Linux, the OS refuses to show another user's process.
    """
    pid = os.getpid() if pid is None else pid
    return _linux_usage(pid, pss) if _LINUX else _psutil_usage(pid)


def private_memory(pid: int | None = None) -> int:
    """Return the private bytes of process ``pid`` (default: this process), as cheaply as possible.

    This is the probe a pool supervisor runs after every task to decide whether a worker has
    grown past its recycle limit, so on Linux it is one read of ``/proc/<pid>/statm`` and two
    integer parses (~5 µs), with no psutil involved. Elsewhere it is psutil's USS.

    Raises:
        ProcessLookupError: the process does not exist or has exited (including zombies).
    """
    if not _LINUX:
        return usage(pid).private
    resident, shared = _statm(os.getpid() if pid is None else pid)
    return resident - shared


def private_memory_of(pids: Iterable[int]) -> int:
    """Return the summed private bytes of processes ``pids``, leaving out those that are gone.

    For a set of processes listed a moment ago (a pool's workers, say), any of which may have
    exited since: private memory, unlike RSS, can be summed.
    """
    total = 0
    for pid in pids:
        try:
            total += private_memory(pid)
        except ProcessLookupError:  # exited between listing and measuring
            continue
    return total


def usage_tree(pid: int | None = None, *, pss: bool = True) -> dict[int, Usage]:
    """Return the usage of process ``pid`` (default: this process) and all its descendants.

    Workers, actors and anything they spawn all count toward a memory budget. Descendants that
    exit during the walk are left out rather than failing the whole measurement, since pools
    end and replace workers at any time.

    Raises:
        ProcessLookupError: ``pid`` itself does not exist.
    """
    import psutil

    root = os.getpid() if pid is None else pid
    tree = {root: usage(root, pss=pss)}
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {root}") from None
    for child in children:
        try:
            tree[child.pid] = usage(child.pid, pss=pss)
        except ProcessLookupError:
            continue
    return tree


def total_private(tree: dict[int, Usage]) -> int:
    """Return the summed private bytes of a :func:`usage_tree` result.

    Private memory, unlike RSS, can be summed: shared slots and libraries are not counted once
    per process.
    """
    return sum(u.private for u in tree.values())


# --------------------------------------------------------------------------------------------
# System
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemMemory:
    """Memory of the whole machine, in bytes.

    Attributes:
        total: physical memory.
        available: memory that can be given to new work without swapping (Linux
            ``MemAvailable``): the right base for limits, unlike "free", which ignores caches.
        shmem: all tmpfs and shared memory in use (Linux ``Shmem``), where shared-memory slots
            show up; None off Linux.
        shm_free: free bytes in ``/dev/shm``; a segment larger than this would SIGBUS on first
            touch instead of failing cleanly. None where there is no ``/dev/shm``.
        shm_total: size of ``/dev/shm`` (often half of RAM, or 64 MiB in Docker); None where
            there is no ``/dev/shm``.
    """

    total: int
    available: int
    shmem: int | None
    shm_free: int | None
    shm_total: int | None


def _linux_meminfo() -> dict[bytes, int]:
    meminfo: dict[bytes, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, value = line.partition(b":")
        meminfo[key] = int(value.split()[0]) * 1024
    return meminfo


def _shm_sizes() -> tuple[int | None, int | None]:
    if not hasattr(os, "statvfs"):  # Windows
        return None, None
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:  # macOS and others keep POSIX shared memory elsewhere
        return None, None
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def system() -> SystemMemory:
    """Return the machine's total and available memory and the state of ``/dev/shm``."""
    shm_free, shm_total = _shm_sizes()
    if _LINUX:
        meminfo = _linux_meminfo()
        return SystemMemory(
            total=meminfo[b"MemTotal"],
            available=meminfo[b"MemAvailable"],
            shmem=meminfo[b"Shmem"],
            shm_free=shm_free,
            shm_total=shm_total,
        )
    import psutil

    vm = psutil.virtual_memory()
    return SystemMemory(
        total=vm.total, available=vm.available, shmem=None, shm_free=shm_free, shm_total=shm_total
    )


# --------------------------------------------------------------------------------------------
# Giving memory back
# --------------------------------------------------------------------------------------------


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """Return glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, ...).

    Looked up once: ``ctypes.CDLL`` costs far more than the call itself.
    """
    if not _LINUX:
        return None
    import ctypes

    try:
        # CDLL(None) searches the symbols already loaded into this process, i.e. its libc.
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> int | None:
    """Ask glibc to return freed heap memory to the OS; return the private bytes released.

    glibc only gives back memory at the top of its heap on ``free``; freed blocks below a live
    allocation (typical after a task made many mid-sized objects) stay in the process until
    ``malloc_trim(0)`` releases their pages. Workers call this between tasks so their private
    memory reflects what they hold, and recycling by memory does not fire on allocator slack.

    Safe to call often and from any thread: glibc locks each arena, and ctypes drops the GIL
    during the call. It costs from microseconds on a small heap to milliseconds on a large,
    fragmented one. Returns None (and does nothing) where there is no ``malloc_trim``; the
    result is clamped at 0 because other threads may allocate meanwhile.
    """
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return None
    before = private_memory()
    malloc_trim(0)
    return max(0, before - private_memory())


# --------------------------------------------------------------------------------------------
# Peak of one piece of work
# --------------------------------------------------------------------------------------------


class PeakProbe:
    """How far this process's resident memory rose during a piece of work (Linux only).

    ``start()`` resets the kernel's high-water mark (``VmHWM``, by writing ``5`` to
    ``/proc/self/clear_refs``, Linux >= 4.0) and notes the current RSS; ``rise()`` is the peak
    since then minus that RSS: what the work needed at its worst, including temporaries it freed
    before returning, which a before/after difference misses. About 20 µs per use. Where this
    is not available, ``rise()`` returns None.
    """

    def __init__(self) -> None:
        self._base: int | None = None

    def start(self) -> None:
        if not _LINUX:
            return
        try:
            fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
            try:
                os.write(fd, b"5")
            finally:
                os.close(fd)
            self._base = _statm(os.getpid())[0]
        except OSError:
            self._base = None

    def rise(self) -> int | None:
        if self._base is None:
            return None
        status = _read("/proc/self/status")
        start = status.find(b"VmHWM:")
        if start < 0:
            return None
        start += len(b"VmHWM:")
        peak = int(status[start : status.index(b"kB", start)]) * 1024
        return max(0, peak - self._base)
