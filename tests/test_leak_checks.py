"""The leak checks of conftest.py find what a test leaves, whoever its parent is now."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import segment_is_ours, session_processes
from memwise.shared._names import Owner, current_owner, new_name

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc"),
]


def test_a_reparented_process_is_found_then_ended():
    # sh starts sleep in the background and exits: sleep is orphaned, no longer our child.
    shell = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    orphan = int(shell.stdout)
    try:
        assert orphan in session_processes()
    finally:
        os.kill(orphan, 9)
    deadline = time.monotonic() + 10
    while orphan in session_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orphan not in session_processes()


def test_an_unreaped_child_is_found():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while pid not in session_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "zombie" in session_processes()[pid]
    finally:
        os.waitpid(pid, 0)
    assert pid not in session_processes()


def test_segments_are_attributed_by_their_processes():
    assert segment_is_ours(new_name(current_owner()).lstrip("/"))
    # Owned and created by init (pid 1), which is not of this session: another session's.
    foreign = new_name(Owner(1, "zzzz")).lstrip("/").split("_")
    foreign[3] = "1"
    assert not segment_is_ours("_".join(foreign))
