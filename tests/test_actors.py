"""Actors (one object per process, or per thread) and Sessions (an LRU of warm actors).

The behaviour a caller sees must not depend on where the object lives, so every test that can
is run twice: ``isolation="always"`` (a process) and ``isolation="never"`` (a thread). Crashes,
restarts and the thread fallback only exist for processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future

import numpy as np
import pytest

import _actor_tasks as tasks
from _tasks import WAIT, is_gone, wait_gone, wait_until
from memwise import Actor, Sessions, spawn
from memwise import actors as actors_module
from memwise.errors import BrokenPool, WorkerCrashed, WorkerInitError

pytestmark = pytest.mark.timeout(60)

ISOLATIONS = ["always", "never"]
Spawn = Callable[..., Actor]


@pytest.fixture(params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(isolation: str) -> Iterator[Spawn]:
    """``spawn`` with this test's isolation; every actor made is closed at the end."""
    made: list[Actor] = []

    def make_actor(cls: type, *args: object, **kwargs: object) -> Actor:
        actor = spawn(cls, *args, isolation=isolation, **kwargs)  # type: ignore[arg-type]
        made.append(actor)
        return actor

    yield make_actor
    for actor in made:
        actor.close()


def host(actor: Actor) -> tuple[int, str]:
    """The pid and thread name the actor's object runs in."""
    return actor.call("where").result(WAIT)


def started_pids(directory) -> set[int]:
    return {int(p.stem) for p in directory.glob("*.started")}


# --------------------------------------------------------------------------------------------
# Both isolations
# --------------------------------------------------------------------------------------------


def test_calls_reach_one_stateful_object(make, isolation):
    actor = make(tasks.Counter, 10)
    assert actor.isolation == "not started"  # created lazily, on the first call
    assert actor.call("add", 2).result(WAIT) == 12
    assert actor.call("add", n=3).result(WAIT) == 15
    assert actor.call("get").result(WAIT) == 15
    pid, thread = host(actor)
    if isolation == "always":
        assert actor.isolation == "process"
        assert pid == actor.pid != os.getpid()
    else:
        assert actor.isolation == "thread"
        assert actor.pid is None
        assert pid == os.getpid()
        assert thread != threading.current_thread().name


def test_constructor_keyword_arguments(make):
    assert make(tasks.Counter, start=4).call("get").result(WAIT) == 4


def test_arrays_go_and_come_back(make):
    actor = make(tasks.Counter)
    array = np.arange(1_000_000, dtype=np.float64)  # 8 MB: large enough for a shared slot
    np.testing.assert_array_equal(actor.call("scale", array, 2.0).result(WAIT), array * 2.0)


def test_calls_run_in_order(make):
    actor = make(tasks.Counter)
    futures = [actor.call("add", 1) for _ in range(20)]
    assert [f.result(WAIT) for f in futures] == list(range(1, 21))


def test_a_method_raising_fails_its_call_and_keeps_the_actor(make):
    actor = make(tasks.Counter)
    actor.call("add", 5).result(WAIT)
    where = host(actor)
    with pytest.raises(ValueError, match="bad input"):
        actor.call("fail", "bad input").result(WAIT)
    assert actor.call("add", 1).result(WAIT) == 6  # same object, state intact
    assert host(actor) == where


def test_an_unknown_method_fails_its_call(make):
    actor = make(tasks.Counter)
    with pytest.raises(AttributeError):
        actor.call("no_such_method").result(WAIT)
    assert actor.call("get").result(WAIT) == 0


def test_a_constructor_error_fails_every_call_with_worker_init_error(make):
    actor = make(tasks.BrokenInit, "cannot load the image")
    futures = [actor.call("get"), actor.latest("get"), actor.call("get")]
    for future in futures:
        with pytest.raises(WorkerInitError, match="cannot load the image") as info:
            future.result(WAIT)
        assert "RuntimeError" in str(info.value)


def test_latest_wins(make, tmp_path):
    """While a preview renders, a burst of newer ones: only the last of the burst runs."""
    actor = make(tasks.Counter)
    log, started, release = tmp_path / "log", tmp_path / "started", tmp_path / "release"
    first = actor.latest("render", 0, log, started, release)
    tasks.wait_for(started)
    burst = [actor.latest("render", n, log, None, None) for n in range(1, 6)]
    superseded, last = burst[:-1], burst[-1]
    assert wait_until(lambda: all(f.cancelled() for f in superseded))
    assert not last.cancelled()
    release.touch()
    assert first.result(WAIT) == 0
    assert last.result(WAIT) == 5
    for future in superseded:
        with pytest.raises(CancelledError):
            future.result(0)
    assert tasks.read_lines(log) == ["0", "5"]


def test_latest_leaves_plain_calls_and_other_methods_alone(make, tmp_path):
    actor = make(tasks.Counter)
    log, started, release = tmp_path / "log", tmp_path / "started", tmp_path / "release"
    first = actor.latest("render", 0, log, started, release)
    tasks.wait_for(started)
    plain = actor.call("render", 1, log, None, None)
    other = actor.latest("add", 7)
    newest = actor.latest("render", 2, log, None, None)
    release.touch()
    assert [f.result(WAIT) for f in (first, plain, other, newest)] == [0, 1, 7, 2]
    assert tasks.read_lines(log) == ["0", "1", "2"]


def test_close_cancels_queued_calls_and_lets_the_running_one_finish(make, isolation, tmp_path):
    actor = make(tasks.Counter)
    pid = host(actor)[0]
    started, release = tmp_path / "started", tmp_path / "release"
    running = actor.call("render", 0, tmp_path / "log", started, release)
    tasks.wait_for(started)
    queued = actor.call("add", 1)
    closing = threading.Thread(target=actor.close, kwargs={"timeout": WAIT})
    closing.start()
    assert wait_until(queued.cancelled)
    release.touch()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert running.result(0) == 0
    if isolation == "always":
        assert not wait_gone([pid])


def test_a_closed_actor_ends_its_process_and_refuses_calls(make):
    actor = make(tasks.Counter)
    pid, thread = host(actor)
    actor.close()
    with pytest.raises(RuntimeError, match="closed"):
        actor.call("get")
    if pid != os.getpid():
        assert not wait_gone([pid])
        assert actor.pid is None
    else:
        assert thread not in {t.name for t in threading.enumerate()}
    actor.close()  # closing twice is harmless


def test_an_actor_is_a_context_manager(isolation):
    with spawn(tasks.Counter, isolation=isolation) as actor:
        pid = host(actor)[0]
    with pytest.raises(RuntimeError):
        actor.call("get")
    if isolation == "always":
        assert not wait_gone([pid])


def test_closing_an_actor_that_never_started_starts_nothing():
    actor = spawn(tasks.Counter, isolation="always")
    actor.close()
    assert actor.isolation == "not started"


def test_an_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="isolation"):
        spawn(tasks.Counter, isolation="sometimes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Processes only: crashes and restarts
# --------------------------------------------------------------------------------------------


def test_a_crash_restarts_the_object_and_retries_the_call_once(tmp_path):
    init_log, release = tmp_path / "init.log", tmp_path / "release"
    with spawn(tasks.Counter, init_log=init_log, isolation="always") as actor:
        assert actor.call("add", 5).result(WAIT) == 5
        future = actor.call("hold", tmp_path, release)
        assert wait_until(lambda: started_pids(tmp_path))
        (crashed,) = started_pids(tmp_path)
        assert crashed == actor.pid
        os.kill(crashed, signal.SIGKILL)
        assert wait_until(lambda: started_pids(tmp_path) - {crashed})
        (retried,) = started_pids(tmp_path) - {crashed}
        release.touch()
        # The retry ran in a new process, on an object built anew: the state is reset.
        assert future.result(WAIT) == (retried, 0)
        assert actor.pid == retried
        assert tasks.read_lines(init_log) == [str(crashed), str(retried)]
        assert actor.call("add", 1).result(WAIT) == 1
    assert is_gone(crashed)


def test_a_call_that_crashes_its_retry_too_fails_with_worker_crashed(tmp_path):
    with spawn(tasks.Counter, isolation="always") as actor:
        first = host(actor)[0]
        with pytest.raises(WorkerCrashed) as info:
            actor.call("die").result(WAIT)
        assert "SIGKILL" in str(info.value)
        assert actor.call("get").result(WAIT) == 0  # still usable: two restarts of three
        assert host(actor)[0] != first


def test_more_crashes_than_restarts_break_the_actor(tmp_path):
    init_log = tmp_path / "init.log"
    with spawn(tasks.Counter, init_log=init_log, isolation="always", restarts=3) as actor:
        with pytest.raises(WorkerCrashed):
            actor.call("die").result(WAIT)  # deaths 1 and 2: the call and its retry
        pid = host(actor)[0]
        os.kill(pid, signal.SIGKILL)  # death 3, while idle
        assert wait_until(lambda: actor.pid not in (None, pid))
        assert actor.call("get").result(WAIT) == 0  # three restarts are allowed
        with pytest.raises(BrokenPool):
            actor.call("die").result(WAIT)  # death 4: one too many
        with pytest.raises(BrokenPool):
            actor.call("get").result(WAIT)
    # The first process and three restarts; none after the limit.
    assert len(tasks.read_lines(init_log)) == 4


class _NoProcesses(actors_module._ProcessBackend):
    """Starting a process fails, as it does when the OS refuses to fork."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise OSError("cannot fork: out of process slots")


def test_auto_falls_back_to_a_thread_when_no_process_can_start(monkeypatch):
    monkeypatch.setattr(actors_module, "_ProcessBackend", _NoProcesses)
    with spawn(tasks.Counter, 1, isolation="auto") as actor:
        with pytest.warns(RuntimeWarning, match="thread"):
            first: Future[int] = actor.call("add", 1)
        assert first.result(WAIT) == 2
        assert actor.isolation == "thread"
        assert host(actor)[0] == os.getpid()


def test_always_reports_that_no_process_can_start(monkeypatch):
    monkeypatch.setattr(actors_module, "_ProcessBackend", _NoProcesses)
    with spawn(tasks.Counter, isolation="always") as actor, pytest.raises(OSError, match="fork"):
        actor.call("get").result(WAIT)


def test_auto_does_not_fall_back_when_the_constructor_fails():
    with spawn(tasks.BrokenInit, "bad file", isolation="auto") as actor, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(WorkerInitError, match="bad file"):
            actor.call("get").result(WAIT)
        assert actor.isolation == "not started"


def test_auto_does_not_fall_back_when_the_constructor_kills_its_process():
    """A constructor that crashes its process must not be re-run inside the application.

    Run in a child interpreter: falling back would run ``os._exit`` in the process that
    falls back, and this test must fail rather than end the test session.
    """
    script = (
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(tasks.__file__)!r})\n"
        "import _actor_tasks\n"
        "from memwise import spawn\n"
        "if __name__ == '__main__':\n"
        "    with spawn(_actor_tasks.ExitsInConstructor, 3, isolation='auto') as actor:\n"
        "        error = actor.call('get').exception(30)\n"
        "    print(type(error).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, f"the application died (exit code {done.returncode})"
    assert "RuntimeWarning" not in done.stderr  # no fallback to a thread
    assert done.stdout.split() == ["WorkerInitError"]


def test_auto_uses_a_process_when_it_can():
    with spawn(tasks.Counter, isolation="auto") as actor:
        assert host(actor)[0] != os.getpid()
        assert actor.isolation == "process"


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


def test_sessions_keep_the_most_recently_used_warm(isolation):
    def factory(key: int) -> Actor:
        return spawn(tasks.Counter, key, isolation=isolation)

    with Sessions(factory, keep=2) as sessions:
        one, two = sessions[1], sessions[2]
        assert one.call("add", 100).result(WAIT) == 101
        hosts = {1: host(one), 2: host(two)}
        assert sessions[1] is one  # warm: the same actor, its state kept
        three = sessions[3]  # 2 is now the least recently used
        assert three.call("get").result(WAIT) == 3
        assert sessions.keys() == [1, 3]
        assert 2 not in sessions
        assert len(sessions) == 2
        with pytest.raises(RuntimeError, match="closed"):
            two.call("get")
        if isolation == "always":
            assert not wait_gone([hosts[2][0]])
            assert not is_gone(hosts[1][0])
        assert sessions[1].call("get").result(WAIT) == 101
        # An evicted key comes back as a new object.
        assert sessions[2].call("get").result(WAIT) == 2
        assert sessions.keys() == [1, 2]
        with pytest.raises(RuntimeError):
            three.call("get")
    with pytest.raises(RuntimeError):
        one.call("get")
    if isolation == "always":
        assert not wait_gone([hosts[1][0]])


def test_sessions_evict_a_busy_actor_without_waiting_for_its_call(tmp_path):
    """Opening a key past ``keep`` evicts the least recently used actor at once, even in the
    middle of a call: the call runs to its end and keeps its result, calls queued behind it
    are cancelled, and then the process ends."""
    with Sessions(lambda key: spawn(tasks.Counter, key, isolation="always"), keep=1) as sessions:
        old = sessions["old"]
        pid = host(old)[0]
        started, release = tmp_path / "started", tmp_path / "release"
        running = old.call("render", 7, tmp_path / "log", started, release)
        tasks.wait_for(started)
        queued = old.call("add", 1)
        new = sessions["new"]  # evicts "old" while its call waits for ``release``
        # Had the eviction waited, it would have waited out the actor's close timeout and
        # killed the process: the running call would have failed by now.
        assert not running.done()
        assert sessions.keys() == ["new"]
        assert wait_until(queued.cancelled)
        with pytest.raises(RuntimeError, match="closed"):
            old.call("get")
        assert new.call("get").result(WAIT) == "new"
        release.touch()
        assert running.result(WAIT) == 7  # the busy call finished, with its result
        assert not wait_gone([pid])  # and then the evicted actor's process ended


def test_sessions_close_one_key():
    with Sessions(lambda key: spawn(tasks.Counter, key, isolation="always"), keep=2) as sessions:
        pid = host(sessions["a"])[0]
        sessions.close("a")
        sessions.close("never opened")
        assert "a" not in sessions
        assert not wait_gone([pid])


def test_sessions_need_to_keep_at_least_one():
    with pytest.raises(ValueError, match="keep"):
        Sessions(lambda key: spawn(tasks.Counter), keep=0)
