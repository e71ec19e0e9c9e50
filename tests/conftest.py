"""Fixtures that hold every test to "every process you start, you end"."""

from __future__ import annotations

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
