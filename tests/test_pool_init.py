"""Initializers: run once per worker behind a READY handshake; failures surface at start-up."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import RemoteTraceback, SerializationError, WorkerCrashed, WorkerInitError

pytestmark = pytest.mark.timeout(45)


def causes(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__
    return chain


def test_initializer_runs_in_every_worker_before_its_tasks(tmp_path):
    with WorkerPool(2, initializer=_tasks.init_and_record, initargs=("ready", tmp_path)) as pool:
        # Both workers initialized before the constructor returned.
        assert len(list(tmp_path.glob("*.init"))) == 2
        results = [pool.submit(_tasks.get_state).result(WAIT) for _ in range(10)]
        assert results == ["ready"] * 10
        pids = {int(p.stem) for p in tmp_path.glob("*.init")}
        assert {pool.submit(_tasks.getpid).result(WAIT) for _ in range(20)} <= pids


def test_replacement_workers_run_the_initializer_too(tmp_path):
    with WorkerPool(1, initializer=_tasks.init_and_record, initargs=("again", tmp_path)) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        with pytest.raises(WorkerCrashed):
            pool.submit(_tasks.sigkill_self).result(WAIT)
        assert pool.submit(_tasks.get_state).result(WAIT) == "again"
        new_pid = pool.submit(_tasks.getpid).result(WAIT)
        assert new_pid != pid
        assert (tmp_path / f"{new_pid}.init").exists()


def test_closure_initializer():
    value = {"key": 42}
    with WorkerPool(1, initializer=lambda: _tasks.set_state(value)) as pool:
        assert pool.submit(_tasks.get_state).result(WAIT) == {"key": 42}


def test_failing_initializer_raises_at_construction():
    with pytest.raises(WorkerInitError) as info:
        WorkerPool(2, initializer=_tasks.failing_init, initargs=("no database",))
    error = info.value
    assert "RuntimeError" in str(error)
    assert "no database" in str(error)
    chain = causes(error)
    assert any(isinstance(e, RuntimeError) and "no database" in str(e) for e in chain)
    remote = [e for e in chain if isinstance(e, RemoteTraceback)]
    assert remote, f"no remote traceback in the cause chain: {chain!r}"
    # The worker-side traceback text points at the failing line.
    assert "failing_init" in remote[0].tb
    assert "raise RuntimeError(message)" in remote[0].tb


@pytest.mark.timeout(30)
def test_hanging_initializer_raises_at_construction():
    with pytest.raises(WorkerInitError, match="init_timeout"):
        WorkerPool(1, initializer=_tasks.hanging_init, init_timeout=1)


def test_initializer_that_exits_raises_at_construction():
    with pytest.raises(WorkerInitError, match="exit code 4"):
        WorkerPool(1, initializer=_tasks.exiting_init, initargs=(4,))


def test_initializer_that_segfaults_raises_at_construction():
    with pytest.raises(WorkerInitError, match="SIGSEGV"):
        WorkerPool(1, initializer=_tasks.segfault)


def test_initializer_killed_raises_at_construction():
    with pytest.raises(WorkerInitError, match="SIGKILL"):
        WorkerPool(1, initializer=_tasks.sigkill_self)


def test_unpicklable_initargs_raise_at_construction():
    with pytest.raises(SerializationError, match="initializer"):
        WorkerPool(1, initializer=_tasks.set_state, initargs=(threading.Lock(),))


def test_initargs_that_cannot_be_unpickled_in_the_worker():
    with pytest.raises(WorkerInitError) as info:
        WorkerPool(1, initializer=_tasks.set_state, initargs=(_tasks.Unloadable(),))
    assert "refuses to be unpickled" in "".join(str(e) for e in causes(info.value))


def test_no_worker_survives_a_failed_start(tmp_path):
    with pytest.raises(WorkerInitError):
        WorkerPool(2, initializer=_tasks.init_once_then_fail, initargs=(tmp_path / "m",))
    # One worker initialized fine; it must not be left running (the autouse fixture also
    # checks this, but say it here where it is the point).
    pid = _tasks.read_pid(tmp_path / "m")
    assert not _tasks.wait_gone([pid])


def test_pool_works_after_a_failed_start_elsewhere():
    with pytest.raises(WorkerInitError):
        WorkerPool(1, initializer=_tasks.failing_init, initargs=("x",))
    with WorkerPool(1) as pool:
        assert pool.submit(_tasks.square, 3).result(WAIT) == 9
        assert pool.submit(os.getpid).result(WAIT) != os.getpid()


def test_sigkill_of_worker_during_init(tmp_path):
    # An initializer that reports its pid and waits lets the test kill it mid-init.
    pid_path = tmp_path / "pid"
    errors = []

    def construct():
        try:
            WorkerPool(
                1,
                initializer=_tasks.block,
                initargs=(pid_path, tmp_path / "never"),
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=construct)
    thread.start()
    pid = _tasks.read_pid(pid_path)
    os.kill(pid, signal.SIGKILL)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], WorkerInitError)
    assert "SIGKILL" in str(errors[0])
