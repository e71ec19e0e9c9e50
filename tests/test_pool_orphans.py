"""Workers never outlive their parent, however the parent ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import _tasks
from _tasks import WAIT

TESTS = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.timeout(60)

# The parent: starts a pool whose workers print their pids, optionally keeps them busy, then
# SIGKILLs itself, leaving no chance to clean up.
PARENT = """
import os, signal, sys, tempfile
sys.path.insert(0, {tests!r})
import _tasks
from memwise import WorkerPool

if __name__ == "__main__":
    pool = WorkerPool(2, initializer=_tasks.print_pid, start_method={start_method!r})
    if {busy!r}:
        # Both workers mid-task, blocked on a file nobody will create.
        directory = tempfile.mkdtemp()
        for i in range(2):
            pool.submit(_tasks.block, f"{{directory}}/{{i}}.pid", f"{{directory}}/never")
        for i in range(2):
            _tasks.read_pid(f"{{directory}}/{{i}}.pid")
    os.write(1, f"parent {{os.getpid()}}\\n".encode())
    {ending}
"""

SIGKILL_SELF = "os.kill(os.getpid(), signal.SIGKILL)"


def run_parent(start_method: str, busy: bool, ending: str) -> tuple[int, list[int], int]:
    """Run the parent script; return (its pid, its workers' pids, its exit code)."""
    script = PARENT.format(tests=TESTS, start_method=start_method, busy=busy, ending=ending)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    parent = None
    try:
        # Read line by line, not to EOF: a surviving worker would hold stdout open.
        for line in proc.stdout:
            kind, pid = line.split()
            if kind == "worker":
                workers.append(int(pid))
            else:
                parent = int(pid)
                break
        returncode = proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert parent == proc.pid
    assert len(workers) == 2
    return parent, workers, returncode


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_exit_when_the_parent_is_sigkilled(start_method, busy):
    parent, workers, returncode = run_parent(start_method, busy, SIGKILL_SELF)
    assert returncode == -signal.SIGKILL
    survivors = _tasks.wait_gone(workers, timeout=10)
    for pid in survivors:  # don't leak them into the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their SIGKILLed parent {parent}"


def test_forkserver_exits_with_the_parent():
    ending = (
        "from multiprocessing import forkserver; "
        "os.write(1, f'forkserver {forkserver._forkserver._forkserver_pid}\\n'.encode()); "
        + SIGKILL_SELF
    )
    script = PARENT.format(tests=TESTS, start_method="forkserver", busy=False, ending=ending)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.split())
            if line.startswith("forkserver"):
                break
        assert proc.wait(WAIT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    workers = [int(pid) for kind, pid in lines if kind == "worker"]
    helpers = [int(pid) for kind, pid in lines if kind == "forkserver"]
    assert len(workers) == 2
    assert len(helpers) == 1
    survivors = _tasks.wait_gone(workers + helpers, timeout=10)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{survivors} outlived their SIGKILLed parent"


def test_parent_that_exits_without_shutdown_ends_its_workers():
    # A forgotten pool must neither hang the interpreter's exit nor leave workers behind.
    _, workers, returncode = run_parent("forkserver", False, "sys.exit(0)")
    assert returncode == 0
    assert not _tasks.wait_gone(workers, timeout=10)


def test_parent_that_raises_without_shutdown_ends_its_workers():
    _, workers, returncode = run_parent("forkserver", False, "raise SystemExit(3)")
    assert returncode == 3
    assert not _tasks.wait_gone(workers, timeout=10)
