"""Actors that must not hold on: overdue calls, closing with a call still running, idle
sessions, and where ``isolation="auto"`` puts an object.

Run in both isolations where the behaviour is the same; a thread cannot be killed, so where
a process is killed a thread's call is abandoned instead (and released by the test).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import _actor_tasks as tasks
from _tasks import WAIT, wait_gone, wait_until
from memwise import Sessions, spawn
from memwise.actors import ENV_VAR, resolve_isolation
from memwise.errors import BrokenPool, SerializationError, TaskTimeout

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["always", "never"])
def isolation(request: pytest.FixtureRequest) -> str:
    return request.param


def test_an_overdue_call_fails_with_task_timeout_and_the_object_is_replaced(isolation, tmp_path):
    release = tmp_path / "release"
    with spawn(tasks.Counter, isolation=isolation) as actor:
        assert actor.call("add", 5).result(WAIT) == 5
        first_pid = actor.pid
        overdue = actor.options(timeout=0.5).call("hold", tmp_path, release)
        with pytest.raises(TaskTimeout, match=r"timeout of 0\.5 s"):
            overdue.result(WAIT)
        # A new object, built by the constructor again: the state starts over.
        assert actor.call("get").result(WAIT) == 0
        assert actor.restarts == 1
        if isolation == "always":
            assert actor.pid != first_pid
            assert not wait_gone([first_pid])
        release.touch()  # lets the abandoned thread (isolation="never") end


def test_latest_takes_the_timeout_too(isolation, tmp_path):
    release = tmp_path / "release"
    with spawn(tasks.Counter, isolation=isolation, timeout=0.5) as actor:
        with pytest.raises(TaskTimeout):
            actor.latest("hold", tmp_path, release).result(WAIT)
        # options(timeout=None) lifts the actor's default limit for one call.
        slow = actor.options(timeout=None).call("render", 1, tmp_path / "log", None, None)
        assert slow.result(WAIT) == 1
        release.touch()


def test_a_call_that_finishes_in_time_is_untouched(isolation):
    with spawn(tasks.Counter, isolation=isolation) as actor:
        assert actor.options(timeout=WAIT).call("add", 2).result(WAIT) == 2
        assert actor.restarts == 0


def test_close_with_a_timeout_never_waits_for_a_hung_call(isolation, tmp_path):
    release = tmp_path / "release"
    actor = spawn(tasks.Counter, isolation=isolation)
    pid = actor.call("where").result(WAIT)[0]
    hung = actor.call("hold", tmp_path, release)
    assert wait_until(lambda: list(tmp_path.glob("*.started")))
    closing = threading.Thread(target=actor.close, kwargs={"timeout": 0.5})
    closing.start()
    closing.join(WAIT)
    assert not closing.is_alive()
    if isolation == "always":
        with pytest.raises(BrokenPool, match="timeout"):
            hung.result(WAIT)
        assert not wait_gone([pid])
    release.touch()
    if isolation == "never":
        assert hung.result(WAIT)[0] == os.getpid()  # a thread runs on; it is not killed


def test_idle_sessions_are_closed(isolation):
    with Sessions(lambda key: spawn(tasks.Counter, key, isolation=isolation), idle=0.3) as s:
        actor = s[1]
        pid = actor.call("where").result(WAIT)[0]
        assert wait_until(lambda: 1 not in s)
        with pytest.raises(RuntimeError, match="closed"):
            actor.call("get")
        if isolation == "always":
            assert not wait_gone([pid])
        # Asking again opens a new session.
        assert s[1].call("get").result(WAIT) == 1


def test_a_busy_session_is_not_idle(tmp_path):
    release = tmp_path / "release"
    factory = lambda key: spawn(tasks.Counter, key, isolation="always")  # noqa: E731
    with Sessions(factory, idle=0.2) as sessions:
        busy = sessions["a"].call("hold", tmp_path, release)
        assert wait_until(lambda: list(tmp_path.glob("*.started")))
        time.sleep(0.6)  # three idle periods with the call running: nothing to reclaim
        assert "a" in sessions
        release.touch()
        assert busy.result(WAIT)[1] == "a"


def test_sessions_refuse_a_nonpositive_idle():
    with pytest.raises(ValueError, match="idle"):
        Sessions(lambda key: spawn(tasks.Counter), idle=0)


# --------------------------------------------------------------------------------------------
# isolation="auto"
# --------------------------------------------------------------------------------------------


def test_the_environment_variable_decides_auto(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "never")
    assert resolve_isolation("auto") == "never"
    assert resolve_isolation("always") == "always"  # what the code asks for explicitly wins
    with spawn(tasks.Counter, 1) as actor:
        assert actor.call("where").result(WAIT)[0] == os.getpid()
        assert actor.isolation == "thread"
    monkeypatch.setenv(ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=ENV_VAR):
        spawn(tasks.Counter)


def test_auto_means_threads_on_windows(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("sys.platform", "win32")
    assert resolve_isolation("auto") == "never"
    monkeypatch.setattr("sys.platform", "linux")
    assert resolve_isolation("auto") == "auto"


def test_auto_runs_an_unpicklable_object_in_a_thread_with_a_warning(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with spawn(tasks.Holds, threading.Lock()) as actor:
        with pytest.warns(RuntimeWarning, match="cannot be pickled"):
            kind = actor.call("kind")
        assert kind.result(WAIT) == "lock"
        assert actor.isolation == "thread"


def test_always_refuses_an_unpicklable_object():
    with spawn(tasks.Holds, threading.Lock(), isolation="always") as actor:
        with pytest.raises(SerializationError):
            actor.call("kind").result(WAIT)
        assert actor.isolation == "not started"


def test_trim_after_every_call(isolation):
    with spawn(tasks.Counter, isolation=isolation, trim=True) as actor:
        assert actor.call("add", 3).result(WAIT) == 3
        assert actor.call("add", 4).result(WAIT) == 7
