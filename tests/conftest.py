"""Fixtures that hold every test to "every process you start, you end" (and every segment)."""

from __future__ import annotations

import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import time

import psutil
import pytest

# Helper processes multiprocessing keeps for the life of the test session; they are not ours.
_SESSION_HELPERS = ("_forkserver_pid", "_pid")


def _session_helper_pids() -> set[int]:
    pids = set()
    for helper in (
        multiprocessing.forkserver._forkserver,
        multiprocessing.resource_tracker._resource_tracker,
    ):
        for attribute in _SESSION_HELPERS:
            pid = getattr(helper, attribute, None)
            if pid:
                pids.add(pid)
    return pids


def _children() -> dict[int, str]:
    me = psutil.Process()
    helpers = _session_helper_pids()
    found = {}
    for child in me.children(recursive=True):
        try:
            if child.pid in helpers or child.status() == psutil.STATUS_ZOMBIE:
                continue
            found[child.pid] = " ".join(child.cmdline())[:120]
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Fail a test that leaves a child process behind (after a short grace period)."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        strays = {pid: cmd for pid, cmd in _children().items() if pid not in before}
        if not strays or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in strays:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not strays, f"test left child processes behind: {strays}"


@pytest.fixture(scope="module")
def shared_pool():
    """A 2-worker pool shared by the non-destructive tests of one module.

    Its workers start before any test that uses it, so the stray-process check counts them as
    already there. Tests using it must never kill, time out or crash its workers.
    """
    from memwise import WorkerPool

    with WorkerPool(2) as pool:
        yield pool


# --------------------------------------------------------------------------------------------
# Shared memory: no test may leave a memwise segment in /dev/shm.
# --------------------------------------------------------------------------------------------


def _memwise_segments() -> set[str]:
    try:
        return {entry for entry in os.listdir("/dev/shm") if entry.startswith("mw_")}
    except OSError:  # no /dev/shm (macOS): nothing to check
        return set()


def _owned_by_another_live_process(entry: str) -> bool:
    from memwise.shared._names import is_alive, parse

    parsed = parse(entry)
    return parsed is not None and parsed.owner.pid != os.getpid() and is_alive(parsed.owner)


@pytest.fixture(autouse=True)
def no_leftover_segments():
    """Fail a test that leaves a memwise shared-memory segment behind.

    Free slots of the default pool are kept for reuse, not leaked: they are trimmed first.
    Segments of other live processes (another test session on this machine) are not ours.
    """
    import gc
    import sys

    before = _memwise_segments()
    yield
    gc.collect()
    if "memwise.shared" in sys.modules:
        sys.modules["memwise.shared"].trim()
    leftover = sorted(
        entry for entry in _memwise_segments() - before if not _owned_by_another_live_process(entry)
    )
    for entry in leftover:  # so that one leak does not fail every test after it
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{entry}")
    assert not leftover, f"test left shared-memory segments behind: {leftover}"
