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


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:  # gone, or not ours to read
        return b""


def _stat_fields(pid: int | str) -> list[bytes]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, ... starttime at 19."""
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rfind(b")") + 2 :].split()


# Processes that started before the session are not its own: their environments are not read.
_SESSION_START = int(_stat_fields("self")[19]) if os.path.isdir("/proc/self") else 0


def _marked(pid: int) -> bool:
    return _MARKER_BYTES in _read(f"/proc/{pid}/environ").split(b"\0")


def session_processes() -> dict[int, str]:
    """Every live process of this session but this one and the helpers, plus unreaped
    (zombie) children of the session: by the marker on Linux, by descent elsewhere.

    Reads /proc directly, and the environment only of processes started since this session
    began: it runs around every test.
    """
    me = os.getpid()
    helpers = _session_helper_pids()
    found = {}
    if not os.path.isdir("/proc/self"):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid not in helpers and child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = " ".join(child.cmdline())[:120]
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in helpers or int(entry) == me:
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if len(fields) < 20 or int(fields[19]) < _SESSION_START:
            continue  # gone, or started before this session: not ours
        if fields[0] == b"Z":
            parent = int(fields[1])
            if parent == me or parent in _session_pids:
                found[pid] = f"zombie of {parent} (never reaped)"
        elif _marked(pid):
            command = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ")
            found[pid] = command.decode(errors="replace")[:120]
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
