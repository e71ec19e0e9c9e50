"""The supervisor's parts without processes: TaskQueue, dispatch and death handling.

Workers here are fakes on real pipes (what the supervisor sends is decoded from the other
end) and time is a fake clock, so deadlines, storms and budget waits are exercised at once.
"""

from __future__ import annotations

import multiprocessing
import pickle
import select
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from memwise import _channel
from memwise.budget import MemoryBudget
from memwise.errors import BrokenPool, MemoryBudgetExceeded, WorkerCrashed
from memwise.pool import deaths
from memwise.pool._protocol import OK, Done, Run, decode, encode_done
from memwise.pool.config import PoolConfig
from memwise.pool.crew import SPARE, Crew
from memwise.pool.deaths import Deaths
from memwise.pool.dispatch import Dispatcher
from memwise.pool.handle import State, Worker
from memwise.pool.inbox import Inbox
from memwise.pool.lanes import Lanes
from memwise.pool.policies import Recycle
from memwise.pool.queue import TaskQueue
from memwise.pool.results import Results
from memwise.pool.stats import Tally
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task

pytestmark = pytest.mark.timeout(30)

FAKE_PID = 4_000_000  # above any pid_max: never a real process


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A process that never runs; its sentinel is a real pipe, so a selector accepts it."""

    _next_pid = FAKE_PID

    def __init__(self, pid: int | None = None) -> None:
        if pid is None:
            FakeProcess._next_pid += 1
            pid = FakeProcess._next_pid
        self.pid = pid
        self.exitcode: int | None = None
        self._sentinel, self._end = multiprocessing.Pipe(duplex=False)
        self.sentinel = self._sentinel.fileno()

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def kill(self) -> None:
        self.exitcode = -9

    def exit(self, exitcode: int) -> None:
        """End as a process would: its sentinel becomes readable."""
        self.exitcode = exitcode
        self._end.send_bytes(b"exited")

    def close(self) -> None:
        self._sentinel.close()
        self._end.close()


class FakeContext:
    """What a Crew asks of a multiprocessing context, with no process ever started."""

    def Pipe(self, duplex: bool = True) -> Any:
        return multiprocessing.Pipe(duplex)

    def Process(self, **_: Any) -> FakeProcess:
        return FakeProcess()

    def RawValue(self, _typecode: str, value: int) -> Any:
        return SimpleNamespace(value=value)

    def Lock(self) -> Any:
        return threading.Lock()


class FakeLedger:
    def __init__(self) -> None:
        self.started = SimpleNamespace(value=0)

    def revoke(self, epoch: int) -> int:
        return int(self.started.value)


def task(key=None, lane=None, priority=0, coalesce=None, memory=0) -> Task:
    made = Task(Future(), b"payload", len, key=key, priority=priority, coalesce=coalesce)
    made.memory = memory
    made.lane = lane
    return made


class Rig:
    """A supervisor's parts wired as the supervisor wires them, minus its thread."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.clock = config.clock
        self.broken: BaseException | None = None
        self.start_failures: list[BaseException] = []
        self.started = threading.Event()
        self.tally = Tally()
        self.hub = EventHub()
        self.lanes = Lanes(config.max_workers, config.min_workers)
        self.queue = TaskQueue()
        self.inbox = Inbox(
            clock=self.clock,
            hub=self.hub,
            on_key_change=False,
            watch_every_task=False,
            relend=True,
        )
        self.crew = Crew(
            config,
            FakeContext(),
            lanes=self.lanes,
            queue=self.queue,
            inbox=self.inbox,
            tally=self.tally,
            hub=self.hub,
            started=self.started,
            on_readable=lambda worker: None,
            on_exit=lambda worker: None,
            start_failed=lambda error, cause, fatal: self.start_failures.append(error),
        )
        parts = dict(
            queue=self.queue,
            crew=self.crew,
            inbox=self.inbox,
            tally=self.tally,
            hub=self.hub,
        )
        self.dispatcher = Dispatcher(config, lanes=self.lanes, **parts)
        self.deaths = Deaths(
            config,
            break_pool=self._break,
            start_failed=lambda error, cause, fatal: self.start_failures.append(error),
            **parts,
        )
        del parts["queue"]
        self.results = Results(config, dispatcher=self.dispatcher, deaths=self.deaths, **parts)

    def _break(self, error: BaseException, cause: BaseException | None) -> None:
        self.broken = self.broken or error

    def close(self) -> None:
        self.crew.close()
        self.inbox.close_pipe()


@pytest.fixture
def make_rig():
    made = []

    def make(**options) -> tuple[Rig, Clock]:
        clock = Clock()
        config = PoolConfig(
            max_workers=options.pop("workers", 2),
            min_workers=0,
            init_payload=None,
            start_initargs=None,
            init_timeout=60.0,
            retries=options.pop("retries", 0),
            start_method=None,
            clock=clock,
            **options,
        )
        rig = Rig(config)
        made.append(rig)
        return rig, clock

    yield make
    for rig in made:
        rig.close()


def fake_worker(rig: Rig, lane: int) -> tuple[Worker, Any]:
    """A READY worker in ``lane``; returns it and the far end of its pipe (whose ``reply``
    attribute is the write end of its reply pipe)."""
    ours, theirs = multiprocessing.Pipe(duplex=True)
    alive, _ = multiprocessing.Pipe(duplex=False)
    reply, theirs.reply = multiprocessing.Pipe(duplex=False)
    worker = Worker(
        lane, FakeProcess(FAKE_PID + lane), ours, alive, FakeLedger(), rig.clock(), reply
    )
    worker.state = State.READY
    rig.crew.place(worker)
    return worker, theirs


def runs(far: Any, replies: bool = False) -> list[list[int]]:
    """The task ids of every Run waiting on the far end of a worker's pipe (those whose
    replies go down the reply pipe, with ``replies``)."""
    found = []
    for data in _channel.channel(far).drain():
        message = decode(data)
        assert isinstance(message, Run)
        if message.reply == replies:
            found.append([entry.task_id for entry in message.tasks])
    return found


def done_message(made: Task, value: Any) -> bytes:
    return encode_done(made.id, OK, pickle.dumps(value), 0.001, (), [], None, None)


# ----- TaskQueue ---------------------------------------------------------------------------


def test_queue_priority_then_submission_order():
    queue = TaskQueue()
    low, high, low2 = task(), task(priority=5), task()
    for t in (low, high, low2):
        queue.push(t)
    assert [queue.pop_for(0), queue.pop_for(0), queue.pop_for(0)] == [high, low, low2]
    assert queue.pop_for(0) is None and len(queue) == 0


def test_queue_keys_are_fifo_per_lane_whatever_their_priority():
    queue = TaskQueue()
    first, urgent_same_key, other = task("a", 1), task("a", 1, priority=9), task("b", 0)
    for t in (first, urgent_same_key, other):
        queue.push(t)
    assert queue.lane_counts() == {1: 2, 0: 1}
    assert queue.waiting_lanes() == {0, 1}
    assert queue.pop_for(1) is first  # the key's order beats the later task's priority
    assert queue.pop_for(1) is urgent_same_key
    assert queue.pop_for(1) is None  # lane 1 never takes lane 0's key
    assert queue.pop_for(0) is other


def test_queue_push_back_restores_original_places():
    queue = TaskQueue()
    tasks = [task(), task("k", 0), task(), task("k", 0)]
    for t in tasks:
        queue.push(t)
    taken = [queue.pop_for(0) for _ in range(3)]
    queue.push_back(taken)
    assert [queue.pop_for(0) for _ in range(4)] == tasks


def test_queue_draining_lane_takes_only_its_keys():
    queue = TaskQueue()
    general, keyed = task(), task("k", 3)
    queue.push(general)
    queue.push(keyed)
    assert queue.peek_key(3, general_too=False) == (True, "k")
    assert queue.pop_for(3, general_too=False) is keyed
    assert queue.pop_for(3, general_too=False) is None
    assert queue.drain() == [general]


# ----- dispatch ----------------------------------------------------------------------------


def test_dispatch_round_robin_and_keys_to_their_lane(make_rig):
    rig, _ = make_rig()
    w0, far0 = fake_worker(rig, 0)
    w1, far1 = fake_worker(rig, 1)
    a, b, keyed = task(), task(), task("k", 0)
    for t in (a, b, keyed):
        rig.queue.push(t)
    rig.dispatcher.dispatch()
    assert runs(far0) == [[a.id]] and runs(far1) == [[b.id]]
    assert list(w0.outstanding) == [a] and list(w1.outstanding) == [b]
    assert len(rig.queue) == 1  # the keyed task waits for lane 0 (not pipelined: long tasks)
    w1.outstanding.clear()  # lane 1 is free again, but the queue is not empty:
    rig.dispatcher.dispatch()
    with rig.inbox.lock:  # so no worker is lent, and a new task goes through the supervisor
        rig.inbox.hand_over_locked(task())
    assert rig.inbox.has_incoming() and runs(far1) == []


def test_idle_workers_are_lent_only_while_nothing_is_queued(make_rig):
    rig, _ = make_rig(workers=1)
    worker, far = fake_worker(rig, 0)
    rig.dispatcher.dispatch()  # nothing queued: the idle worker is lent
    direct = task()
    with rig.inbox.lock:
        rig.inbox.hand_over_locked(direct)
    assert not rig.inbox.has_incoming() and runs(far) == [[direct.id]]
    assert list(worker.outstanding) == [direct] and direct.future.running()
    queued = task()
    with rig.inbox.lock:  # the loan was used up: the next task goes through the supervisor
        rig.inbox.hand_over_locked(queued)
    assert rig.inbox.has_incoming() and runs(far) == []


def test_a_call_is_answered_to_the_calling_thread_and_its_worker_lent_again(make_rig):
    rig, _ = make_rig(workers=1)
    worker, far = fake_worker(rig, 0)
    rig.dispatcher.dispatch()
    called = task()
    with rig.inbox.lock:
        assert rig.inbox.hold_locked(called) is worker
    assert runs(far, replies=True) == [[called.id]] and worker.calling is called
    rig.dispatcher.dispatch()  # the supervisor neither lends nor sends to a held worker
    other = task()
    with rig.inbox.lock:
        assert rig.inbox.hold_locked(other) is None
    _channel.channel(far.reply).send(done_message(called, 42))
    done = rig.inbox.await_reply(worker)
    assert done is not None and done.task_id == called.id
    rig.inbox.give_back(worker, called, done, None)
    assert worker.calling is None and not worker.held
    with rig.inbox.lock:  # lent again by the calling thread itself: no supervisor round
        assert rig.inbox.hold_locked(other) is worker
    answers = rig.inbox.take_answers(worker)
    assert [(a.task, a.done) for a in answers] == [(called, done)]
    rig.results.book(worker, called, done, None)
    assert rig.tally.done == 1 and worker.tasks_done == 1


def woken(rig: Rig) -> bool:
    """Whether the supervisor was poked since the last look (and forget it)."""
    readable, _, _ = select.select([rig.inbox.wake_fd], [], [], 0)
    rig.inbox.collect()
    return bool(readable)


def test_a_call_given_back_wakes_the_supervisor_unless_its_worker_is_lent_again(make_rig):
    rig, _ = make_rig(workers=1)
    worker, far = fake_worker(rig, 0)
    rig.dispatcher.dispatch()
    for supervisor_took_the_loans_back in (False, True):
        called = task()
        with rig.inbox.lock:
            assert rig.inbox.hold_locked(called) is worker
        runs(far, replies=True)
        woken(rig)
        if supervisor_took_the_loans_back:
            rig.inbox.reclaim()  # its queue got work: the worker given back is what it needs
        _channel.channel(far.reply).send(done_message(called, 1))
        rig.inbox.give_back(worker, called, rig.inbox.await_reply(worker), None)
        assert woken(rig) is supervisor_took_the_loans_back


def test_a_call_whose_worker_dies_becomes_the_task_it_died_in(make_rig):
    rig, _ = make_rig(workers=1, retries=1)
    worker, _far = fake_worker(rig, 0)
    rig.dispatcher.dispatch()
    called = task()
    with rig.inbox.lock:
        rig.inbox.hold_locked(called)
    worker.ledger.started.value = called.id
    worker.process.exit(-9)
    assert rig.inbox.await_reply(worker) is None
    assert rig.inbox.defer_exit(worker)  # still held: its exit waits for the give-back
    rig.inbox.give_back(worker, called, None, None)
    assert not rig.inbox.defer_exit(worker)
    rig.results.drain(worker)
    assert list(worker.outstanding) == [called] and worker.calling is None
    rig.deaths.on_exit(worker)
    assert rig.queue.pop_for(0) is called  # re-run: retries allow one more
    assert not called.future.done()


def test_latest_wins_tasks_are_never_pipelined(make_rig):
    rig, _ = make_rig(workers=1)
    worker, far = fake_worker(rig, 0)
    running = task()
    # Tasks are short: pipelining is on.
    rig.dispatcher.learn(worker, running, Done(running.id, OK, b"", 1e-6, (), [], None, None))
    plain, latest, after = task(), task(coalesce="view"), task()
    worker.outstanding.append(running)
    worker.busy_since = rig.clock()
    rig.queue.push(plain)
    rig.dispatcher.dispatch()
    assert runs(far) == [[plain.id]]  # a plain task is pipelined behind the running one
    rig.queue.push(latest)
    rig.queue.push(after)
    rig.dispatcher.dispatch()
    assert runs(far) == []  # the latest-wins task waits for a free worker, and so does its follower
    worker.outstanding.clear()
    rig.dispatcher.dispatch()
    assert runs(far) == [[latest.id, after.id]]  # a plain task may follow it


def test_a_budget_request_that_can_never_fit_fails_at_once(make_rig):
    budget = MemoryBudget(limit="1 GiB", max_wait=3600)
    rig, _ = make_rig(budget=budget)
    fake_worker(rig, 0)
    too_big = task(memory=2 << 30)
    rig.queue.push(too_big)
    rig.dispatcher.dispatch()
    with pytest.raises(MemoryBudgetExceeded):
        too_big.future.result(0)
    assert rig.tally.failed == 1


def test_a_budget_request_that_may_fit_waits_max_wait(make_rig):
    budget = MemoryBudget(limit="1 GiB", max_wait=5)
    rig, clock = make_rig(budget=budget)
    _, far = fake_worker(rig, 0)
    waiting = task(memory=(1 << 30) - 1)  # fits the limit, not beside this process's memory
    rig.queue.push(waiting)
    rig.dispatcher.dispatch()
    assert not waiting.future.done() and rig.dispatcher.budget_waiting() == 1
    assert runs(far) == []
    clock.now += 4.9
    rig.dispatcher.dispatch()
    assert not waiting.future.done()
    clock.now += 0.2
    rig.dispatcher.dispatch()
    with pytest.raises(MemoryBudgetExceeded):
        waiting.future.result(0)


# ----- deaths ------------------------------------------------------------------------------


def die(rig: Rig, worker: Worker, exitcode: int, running: Task | None = None) -> None:
    if running is not None:
        worker.ledger.started.value = running.id
    worker.process.exitcode = exitcode
    rig.deaths.on_exit(worker)


def test_a_death_fails_the_running_task_and_requeues_the_ones_behind(make_rig):
    rig, _ = make_rig()
    worker, _ = fake_worker(rig, 0)
    running, behind = task(), task()
    for t in (running, behind):
        t.claim()
        worker.outstanding.append(t)
    die(rig, worker, -9, running)
    with pytest.raises(WorkerCrashed, match="SIGKILL"):
        running.future.result(0)
    assert rig.queue.pop_for(0) is behind
    assert rig.crew.in_lane(0) is None  # the loop starts a replacement in the lane
    assert (rig.tally.restarts, rig.tally.failed, rig.crew.vacancies()) == (1, 1, {0: "died"})


def test_a_death_with_retries_left_requeues_the_running_task(make_rig):
    rig, _ = make_rig(retries=1)
    worker, _ = fake_worker(rig, 0)
    running = task()
    running.claim()
    worker.outstanding.append(running)
    die(rig, worker, -11, running)
    assert not running.future.done() and running.attempts == 1
    assert rig.queue.pop_for(0) is running and rig.tally.retried == 1


def test_a_worker_stopped_while_starting_stays_stopping_and_its_exit_is_no_death(make_rig):
    rig, _ = make_rig()
    worker, _ = fake_worker(rig, 0)
    worker.state = State.STARTING
    rig.crew.stop(worker)  # shutdown while it runs its initializer
    rig.crew.on_ready(worker)  # its READY crosses the Stop
    assert worker.state is State.STOPPING
    die(rig, worker, 0)
    assert rig.tally.restarts == 0 and rig.crew.vacancies() == {}


def test_idle_deaths_break_the_pool_only_when_they_come_fast(make_rig):
    rig, clock = make_rig(workers=1)
    for _ in range(deaths.STORM_DEATHS - 1):
        die(rig, fake_worker(rig, 0)[0], 1)
        clock.now += deaths.STORM_SECONDS / deaths.STORM_DEATHS
    assert rig.broken is None
    clock.now += deaths.STORM_SECONDS  # the earlier deaths are out of the window
    die(rig, fake_worker(rig, 0)[0], 1)
    assert rig.broken is None
    for _ in range(deaths.STORM_DEATHS - 1):
        die(rig, fake_worker(rig, 0)[0], 1)
    assert isinstance(rig.broken, BrokenPool)


def test_max_restarts_breaks_the_pool(make_rig):
    rig, clock = make_rig(max_restarts=2)
    for death in range(3):
        worker, _ = fake_worker(rig, 0)
        running = task()
        running.claim()
        worker.outstanding.append(running)
        clock.now += 60  # never a storm
        die(rig, worker, -9, running)
        assert (rig.broken is None) == (death < 2)
    assert "max_restarts=2" in str(rig.broken)


def started_spares(rig: Rig) -> list[Worker]:
    """Wait for the launcher's thread to start the spares asked for; the crew's spares."""
    deadline = time.monotonic() + 30.0
    while rig.crew.pending_spares() and time.monotonic() < deadline:
        for key, _events in rig.crew.wait(1.0):
            key.data()
    return [w for w in rig.crew.out_of_lanes() if rig.crew.is_spare(w)]


def test_recycle_spares_start_only_while_work_is_waiting(make_rig):
    rig, _ = make_rig(recycle=Recycle(tasks=10, spares=1))
    rig.started.set()
    rig.crew.staff()
    rig.crew.start_spares()
    assert rig.crew.everyone() == [] and not rig.crew.pending_spares()  # nothing to do
    rig.queue.push(task())
    rig.crew.staff()
    assert [w.lane for w in rig.crew.in_lanes()] == [0]  # the lane worker, started at once
    rig.crew.start_spares()
    rig.crew.start_spares()  # one spare is enough, started or still starting
    assert [w.lane for w in started_spares(rig)] == [SPARE]  # on the launcher's thread
    assert len(rig.crew.everyone()) == 2


def test_a_ready_spare_takes_a_recycled_workers_lane_in_the_same_turn(make_rig):
    rig, _ = make_rig(workers=1, recycle=Recycle(tasks=1, spares=1))
    rig.started.set()
    retired, _ = fake_worker(rig, 0)
    rig.queue.push(task())
    rig.crew.start_spares()
    (spare,) = started_spares(rig)
    rig.crew.on_ready(spare)
    rig.crew.retire(retired, "tasks")
    assert rig.crew.staff()  # True: the supervisor dispatches again before it waits
    assert rig.crew.in_lane(0) is spare and not rig.crew.is_spare(spare)
