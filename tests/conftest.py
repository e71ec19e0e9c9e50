"""Fixtures that hold every test to "every process you start, you end" (and every segment)."""

from __future__ import annotations

import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import time

import psutil
import pytest

# Every process this test session starts inherits this marker in its environment, whoever
# its parent is later (double forks, forkservers orphaned by a killed parent). Other sessions
# running on the same machine carry their own, so their processes are never counted as ours.
SESSION_MARKER = "MEMWISE_TEST_SESSION"
_TOKEN = f"{os.getpid()}-{time.time_ns()}"
os.environ[SESSION_MARKER] = _TOKEN
_MARKER_BYTES = f"{SESSION_MARKER}={_TOKEN}".encode()

# Helper processes multiprocessing keeps for the life of the test session; they are not ours.
_SESSION_HELPERS = ("_forkserver_pid", "_pid")
# Every pid seen carrying the marker: a segment whose dead owner is one of them is ours.
_session_pids: set[int] = {os.getpid()}


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


def _marked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return _MARKER_BYTES in environ.read().split(b"\0")
    except OSError:  # gone, a zombie (no environment left), or not ours to read
        return False


def session_processes() -> dict[int, str]:
    """Every live process of this session but this one and the helpers, plus unreaped
    (zombie) descendants: by the marker on Linux, by descent elsewhere."""
    me = os.getpid()
    helpers = _session_helper_pids()
    found = {}
    candidates = (
        psutil.process_iter()
        if os.path.isdir("/proc/self")
        else psutil.Process().children(recursive=True)
    )
    for process in candidates:
        try:
            if process.pid == me or process.pid in helpers:
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                parent = process.ppid()
                if parent == me or parent in _session_pids:
                    found[process.pid] = f"zombie of {parent} (never reaped)"
                continue
            if os.path.isdir("/proc/self") and not _marked(process.pid):
                continue
            found[process.pid] = " ".join(process.cmdline())[:120]
        except psutil.Error:
            continue
    _session_pids.update(found)
    return found


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Fail a test that leaves a process behind, whoever its parent is now, or a zombie (after
    a short grace period)."""
    before = set(session_processes())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        strays = {pid: cmd for pid, cmd in session_processes().items() if pid not in before}
        if not strays or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
    assert not strays, f"test left processes behind: {strays}"


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


def segment_is_ours(entry: str) -> bool:
    """Whether this session made a segment: its owner or creator is a process of the session
    (alive with the marker, or seen with it before it died)."""
    from memwise.shared._names import parse

    parsed = parse(entry)
    if parsed is None:
        return False  # not a name this version of memwise makes: another session's
    pids = {parsed.owner.pid, parsed.creator}
    return bool(pids & _session_pids) or any(_marked(pid) for pid in pids)


@pytest.fixture(autouse=True)
def no_leftover_segments():
    """Fail a test that leaves a memwise shared-memory segment behind.

    Free slots of the default pool are kept for reuse, not leaked: they are trimmed first.
    Segments of other test sessions on this machine are not ours, whatever their state.
    """
    import gc
    import sys

    before = _memwise_segments()
    yield
    gc.collect()
    if "memwise.shared" in sys.modules:
        sys.modules["memwise.shared"].trim()
    session_processes()  # learn the pids of processes started during the test
    leftover = sorted(entry for entry in _memwise_segments() - before if segment_is_ours(entry))
    for entry in leftover:  # so that one leak does not fail every test after it
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{entry}")
    assert not leftover, f"test left shared-memory segments behind: {leftover}"
