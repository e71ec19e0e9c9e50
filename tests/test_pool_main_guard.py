"""Scripts as a new user writes them: a missing ``if __name__ == "__main__":``, a main module
that fails in workers, a script killed mid-run. Each runs as its own program, in its own
session, so that whatever it leaves behind (processes, /dev/shm segments) can be found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from _tasks import WAIT, wait_until
from memwise import shared

pytestmark = pytest.mark.timeout(90)

UNGUARDED = """
    import numpy as np
    import memwise as mw

    def total(a):
        return float(a.sum())

    a = np.ones(6 * 1024 * 1024)
    with mw.WorkerPool(2, start_method={method!r}) as pool:
        print(pool.submit(total, a).result())
"""

FAILS_IN_WORKERS = """
    import memwise as mw

    if __name__ != "__main__":
        raise ImportError("the license server only answers the main process")

    def square(x):
        return x * x

    if __name__ == "__main__":
        with mw.WorkerPool(1, start_method={method!r}) as pool:
            print(pool.submit(square, 3).result())
"""

KILLED = """
    import os
    import time

    import numpy as np
    import memwise as mw

    def double(a):
        return a * 2

    if __name__ == "__main__":
        pool = mw.WorkerPool(2, start_method={method!r})
        kept = [pool.submit(double, np.ones(1 << 20)).result() for _ in range(3)]
        print(os.getpid(), flush=True)
        time.sleep(600)
"""


def _script(tmp_path, source: str, method: str):
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(source.format(method=method)))
    return path


def _session_members(sid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def _segments_of(pid: int) -> list[str]:
    return shared.owned_segments(pid) or []


def _start(path, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(path)],
        text=True,
        start_new_session=True,  # its processes, and only they, share its session id
        cwd=path.parent,
        **kwargs,
    )


def _run(path) -> tuple[int, int, str]:
    """Run the script to its end: (pid, exit code, stderr)."""
    process = _start(path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=WAIT * 2)
    except subprocess.TimeoutExpired:
        _reap(process.pid)
        process.communicate()
        raise
    return process.pid, process.returncode, stderr


def _reap(sid: int) -> None:
    """Kill whatever the script's session still holds, so that a failing test leaks nothing."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in _segments_of(sid):
        try:
            os.unlink(f"/dev/shm/{name.lstrip('/')}")
        except FileNotFoundError:
            pass


def _assert_nothing_left(pid: int) -> None:
    try:
        assert wait_until(lambda: not _session_members(pid)), _session_members(pid)
        assert wait_until(lambda: not _segments_of(pid)), _segments_of(pid)
    finally:
        _reap(pid)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_script_without_main_guard_fails_at_once_naming_the_idiom(tmp_path, method):
    pid, code, stderr = _run(_script(tmp_path, UNGUARDED, method))
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("memwise.errors.MissingMainGuard"), stderr[-3000:]
    assert 'if __name__ == "__main__":' in last
    assert "initializer" not in stderr
    assert "init_timeout" not in stderr
    # One error, the parent's: no worker traceback around it.
    assert stderr.count("Traceback (most recent call last)") == 1, stderr[-3000:]
    _assert_nothing_left(pid)


def test_a_worker_failing_before_ready_reports_its_own_exception(tmp_path):
    pid, code, stderr = _run(_script(tmp_path, FAILS_IN_WORKERS, "forkserver"))
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("memwise.errors.WorkerInitError"), stderr[-3000:]
    assert "importing the main script" in last
    assert "ImportError: the license server only answers the main process" in last
    assert "initializer" not in stderr
    _assert_nothing_left(pid)


def test_a_worker_dying_before_ready_never_blames_a_missing_initializer(tmp_path):
    # Under spawn the worker dies inside multiprocessing's own start-up, before any memwise
    # code runs in it: the parent can only say how it died, and where the error was printed.
    pid, code, stderr = _run(_script(tmp_path, FAILS_IN_WORKERS, "spawn"))
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("memwise.errors.WorkerInitError"), stderr[-3000:]
    assert "before it was ready" in last
    assert "initializer" not in last
    _assert_nothing_left(pid)


def test_nothing_outlives_a_killed_script(tmp_path):
    process = _start(_script(tmp_path, KILLED, "forkserver"), stdout=subprocess.PIPE)
    try:
        assert int(process.stdout.readline()) == process.pid  # pool up, slots in use
        assert len(_session_members(process.pid)) >= 4  # itself, forkserver, two workers
        assert _segments_of(process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    _assert_nothing_left(process.pid)
