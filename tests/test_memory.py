"""Behaviour of the memory toolkit: sizes, probes, process trees, system figures and trim."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from memwise import memory
from memwise.memory import (
    SystemMemory,
    Usage,
    format_size,
    parse_size,
    private_memory,
    private_memory_of,
    system,
    total_private,
    trim,
    usage,
    usage_tree,
)

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
LINUX = sys.platform.startswith("linux")
GLIBC = LINUX and platform.libc_ver()[0] == "glibc"

# --------------------------------------------------------------------------------------------
# parse_size / format_size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, 0),
        (1024, 1024),
        ("10", 10),
        ("10 B", 10),
        ("4 GiB", 4 * GiB),
        ("600 MiB", 600 * MiB),
        ("1.5GB", 1_500_000_000),
        ("512k", 512 * KiB),
        ("512K", 512 * KiB),
        ("2 kB", 2000),
        ("2 KB", 2000),
        ("3m", 3 * MiB),
        ("4G", 4 * GiB),
        ("1 TiB", TiB),
        ("2 tb", 2 * 1000**4),
        ("512Mi", 512 * MiB),
        ("  7 gib ", 7 * GiB),
        ("1.5 KiB", 1536),
        (".5 MiB", MiB // 2),
        ("3. GiB", 3 * GiB),
        ("123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_parse_size_reads_bytes_and_units(given: int | str, expected: int) -> None:
    assert parse_size(given) == expected


@pytest.mark.parametrize(
    "given",
    ["", "   ", "abc", "GiB", "-1 GiB", "+1 GiB", "1 XB", "1 GiBs", "1 2 GiB", "1,5 GiB", "1.5"],
)
def test_parse_size_rejects_malformed_strings(given: str) -> None:
    with pytest.raises(ValueError, match="Accepted") as info:
        parse_size(given)
    assert repr(given) in str(info.value)


@pytest.mark.parametrize("given", [-1, 0.0, -0.5, 1.5, 2.0, float("nan"), float("inf")])
def test_parse_size_rejects_negative_ints_and_floats_outside_unit_interval(
    given: int | float,
) -> None:
    with pytest.raises(ValueError, match="Accepted"):
        parse_size(given)


@pytest.mark.parametrize("given", [None, True, b"4 GiB", [1]])
def test_parse_size_rejects_other_types(given: Any) -> None:
    with pytest.raises(TypeError, match="size must be"):
        parse_size(given)


def test_parse_size_fraction_of_given_total() -> None:
    assert parse_size(0.5, total=1000) == 500
    assert parse_size(1.0, total=1000) == 1000
    assert parse_size(0.25, total=4 * GiB) == GiB


def test_parse_size_fraction_defaults_to_available_memory() -> None:
    quarter = parse_size(0.25)
    # Available memory moves between the two reads; a wide band is enough to tell it from total.
    assert 0 < quarter <= system().total // 4
    assert quarter == pytest.approx(system().available / 4, rel=0.2)


def test_parse_size_ignores_total_for_absolute_sizes() -> None:
    assert parse_size("1 KiB", total=10) == KiB
    assert parse_size(5, total=10) == 5


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (48 * MiB, "48.0 MiB"),
        (MiB - 1, "1.0 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (TiB, "1.0 TiB"),
        (2048 * TiB, "2.0 PiB"),
        (2048 * 1024 * TiB, "2048.0 PiB"),
        (-48 * MiB, "-48.0 MiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [0, 1, 1000, 1536, 48 * MiB, 5 * GiB + 3, 7 * TiB])
def test_format_size_reads_back_with_parse_size(n: int) -> None:
    assert parse_size(format_size(n)) == pytest.approx(n, rel=0.05, abs=1)


# --------------------------------------------------------------------------------------------
# Process probes
# --------------------------------------------------------------------------------------------


def test_usage_of_this_process() -> None:
    u = usage()
    assert isinstance(u, Usage)
    assert u.pid == os.getpid()
    assert u.private > 0
    assert u.rss >= u.private
    if LINUX:
        assert u.pss is not None and 0 < u.pss <= u.rss
        assert u.shared is not None and u.private + u.shared == u.rss
    assert usage(os.getpid()).pid == os.getpid()


def test_usage_without_pss() -> None:
    assert usage(pss=False).pss is None


def test_private_memory_agrees_with_usage() -> None:
    assert private_memory() == pytest.approx(usage(pss=False).private, rel=0.1)
    assert private_memory(os.getpid()) > 0


def _touched(size: int) -> bytearray:
    """Return a bytearray whose pages are all resident (calloc'd pages are not until written)."""
    buffer = bytearray(size)
    page = 4096
    buffer[::page] = b"\x01" * len(range(0, size, page))
    return buffer


def test_known_allocation_shows_in_private_memory_and_pss() -> None:
    size = 64 * MiB
    before = usage()
    buffer = _touched(size)
    during = usage()
    probe = private_memory()
    grown = during.private - before.private
    assert 0.8 * size <= grown <= size + 32 * MiB
    assert probe - before.private >= 0.8 * size
    if LINUX:
        assert before.pss is not None and during.pss is not None
        assert during.pss - before.pss >= 0.8 * size
    del buffer
    # A block this large is its own mmap, so freeing it gives the pages back at once.
    assert private_memory() <= during.private - 0.8 * size


@pytest.fixture
def exited_pid() -> int:
    """Return the pid of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_usage_of_dead_process_raises(exited_pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        usage(exited_pid)
    with pytest.raises(ProcessLookupError):
        private_memory(exited_pid)
    with pytest.raises(ProcessLookupError):
        usage_tree(exited_pid)


def test_private_memory_of_sums_the_living_and_skips_the_gone(exited_pid: int) -> None:
    assert private_memory_of([]) == 0
    assert private_memory_of([exited_pid]) == 0
    mine = private_memory()
    assert private_memory_of([os.getpid(), exited_pid]) == pytest.approx(mine, rel=0.1)
    assert private_memory_of([os.getpid()] * 2) == pytest.approx(2 * mine, rel=0.1)


@pytest.mark.skipif(not LINUX, reason="zombies are probed through /proc on Linux")
@pytest.mark.timeout(30)
def test_usage_of_zombie_raises() -> None:
    # A worker that died but is not reaped yet is what a supervisor meets first.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
        with pytest.raises(ProcessLookupError):
            usage(child.pid)
        with pytest.raises(ProcessLookupError):
            private_memory(child.pid)
    finally:
        child.kill()
        child.wait()


_PARENT_OF_SLEEPER = """
import subprocess, sys
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(sleeper.pid, flush=True)
sleeper.wait()
"""


@pytest.fixture
def process_tree() -> Iterator[tuple[int, int]]:
    """Start child → grandchild (sleeping); yield their pids; end and reap both."""
    child = subprocess.Popen(
        [sys.executable, "-c", _PARENT_OF_SLEEPER], stdout=subprocess.PIPE, text=True
    )
    grandchild: int | None = None
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        yield child.pid, grandchild
    finally:
        # The child reaps the grandchild once it is killed; then the child is ended and reaped.
        if grandchild is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(grandchild).kill()
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


@pytest.mark.timeout(30)
def test_usage_tree_covers_descendants(process_tree: tuple[int, int]) -> None:
    child, grandchild = process_tree
    tree = usage_tree(child)
    assert set(tree) == {child, grandchild}
    assert all(u.pid == pid and u.private > 0 for pid, u in tree.items())
    assert total_private(tree) == sum(u.private for u in tree.values())

    ours = usage_tree(pss=False)
    assert {os.getpid(), child, grandchild} <= set(ours)
    assert all(u.pss is None for u in ours.values())
    assert total_private(ours) > total_private(tree)


@pytest.mark.timeout(30)
def test_usage_tree_skips_processes_that_vanish(
    process_tree: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    child, grandchild = process_tree
    real_usage = memory.usage

    def grandchild_vanishes(pid: int | None = None, *, pss: bool = True) -> Usage:
        if pid == grandchild:
            raise ProcessLookupError(pid)
        return real_usage(pid, pss=pss)

    monkeypatch.setattr(memory, "usage", grandchild_vanishes)
    assert set(usage_tree(child)) == {child}


def test_total_private_of_empty_tree() -> None:
    assert total_private({}) == 0


# --------------------------------------------------------------------------------------------
# System
# --------------------------------------------------------------------------------------------


def test_system_fields_are_sane() -> None:
    s = system()
    assert isinstance(s, SystemMemory)
    assert 0 < s.available <= s.total
    if LINUX:
        assert s.shmem is not None and 0 <= s.shmem <= s.total
    if s.shm_total is not None:
        assert s.shm_free is not None and 0 <= s.shm_free <= s.shm_total
    if LINUX and os.path.isdir("/dev/shm"):
        assert s.shm_total is not None and s.shm_total > 0


# --------------------------------------------------------------------------------------------
# trim
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(GLIBC, reason="glibc has malloc_trim")
def test_trim_is_a_no_op_without_malloc_trim() -> None:
    assert trim() is None


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is a glibc function")
def test_trim_returns_released_bytes() -> None:
    released = trim()
    assert isinstance(released, int) and released >= 0
    assert trim() is not None  # cached lookup, safe to repeat


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is a glibc function")
def test_trim_releases_freed_heap_blocks() -> None:
    trim()
    # 1000-byte objects are too big for Python's small-object allocator and too small for
    # mmap, so they sit on glibc's heap; a live block allocated after them pins the heap top,
    # so freeing them returns nothing to the OS until malloc_trim.
    blocks = [bytes(1000) for _ in range(64 * 1024)]
    pin = bytes(1000)
    del blocks
    before = private_memory()
    released = trim()
    assert released is not None and released > 0
    assert private_memory() <= before
    del pin


# --------------------------------------------------------------------------------------------
# Import cost
# --------------------------------------------------------------------------------------------

_IMPORT_CHECK = """
import json, sys
import memwise.memory as m
loaded = {"import": [name for name in ("numpy", "psutil") if name in sys.modules]}
m.private_memory(); m.usage(); m.system(); m.trim(); m.parse_size("1 GiB")
loaded["probes"] = [name for name in ("numpy", "psutil") if name in sys.modules]
print(json.dumps(loaded))
"""


@pytest.mark.timeout(30)
def test_import_loads_neither_numpy_nor_psutil() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert loaded["import"] == []
    if LINUX:  # the Linux probes read /proc directly
        assert loaded["probes"] == []
