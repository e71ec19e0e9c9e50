"""The supervisor's parts without processes: TaskQueue, dispatch and death handling.

Workers here are fakes on real pipes (what the supervisor sends is decoded from the other
end) and time is a fake clock, so deadlines, storms and budget waits are exercised at once.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from memwise import _channel
from memwise.budget import MemoryBudget
from memwise.errors import BrokenPool, MemoryBudgetExceeded, WorkerCrashed
from memwise.pool import deaths, dispatch
from memwise.pool._protocol import Ready, Run, decode
from memwise.pool.handle import State, Worker
from memwise.pool.policies import Recycle
from memwise.pool.queue import TaskQueue
from memwise.pool.supervisor import SPARE, PoolConfig, Supervisor
from memwise.pool.task import Task

pytestmark = pytest.mark.timeout(30)

FAKE_PID = 4_000_000  # above any pid_max: never a real process


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self.sentinel = -1

    def join(self, timeout: float | None = None) -> None:
        pass

    def kill(self) -> None:
        self.exitcode = -9

    def close(self) -> None:
        pass


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


@pytest.fixture
def make_supervisor():
    made = []

    def make(**options) -> tuple[Supervisor, Clock]:
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
        sup = Supervisor(config)
        made.append(sup)
        return sup, clock

    yield make
    for sup in made:
        for worker in sup.everyone():
            sup.forget(worker)
        sup._cleanup()  # no thread ran: closes its pipe and selector


def fake_worker(sup: Supervisor, lane: int) -> tuple[Worker, Any]:
    """A READY worker in ``lane``; returns it and the far end of its pipe."""
    ours, theirs = multiprocessing.Pipe(duplex=True)
    alive, _ = multiprocessing.Pipe(duplex=False)
    worker = Worker(lane, FakeProcess(FAKE_PID + lane), ours, alive, FakeLedger(), sup.clock())
    worker.state = State.READY
    sup.workers[lane] = worker
    return worker, theirs


def runs(far: Any) -> list[list[int]]:
    """The task ids of every Run waiting on the far end of a worker's pipe."""
    found = []
    for data in _channel.channel(far).drain():
        message = decode(data)
        assert isinstance(message, Run)
        found.append([entry.task_id for entry in message.tasks])
    return found


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


def test_dispatch_round_robin_and_keys_to_their_lane(make_supervisor):
    sup, _ = make_supervisor()
    w0, far0 = fake_worker(sup, 0)
    w1, far1 = fake_worker(sup, 1)
    a, b, keyed = task(), task(), task("k", 0)
    for t in (a, b, keyed):
        sup.queue.push(t)
    dispatch.dispatch(sup)
    assert runs(far0) == [[a.id]] and runs(far1) == [[b.id]]
    assert list(w0.outstanding) == [a] and list(w1.outstanding) == [b]
    assert len(sup.queue) == 1  # the keyed task waits for lane 0 (not pipelined: long tasks)
    assert sup.idle == {}  # nothing is lent while the queue is not empty


def test_latest_wins_tasks_are_never_pipelined(make_supervisor):
    sup, _ = make_supervisor(workers=1)
    worker, far = fake_worker(sup, 0)
    sup.service_time = 1e-6  # short tasks: pipelining is on
    plain, latest, after = task(), task(coalesce="view"), task()
    running = task()
    worker.outstanding.append(running)
    worker.busy_since = sup.clock()
    sup.queue.push(plain)
    dispatch.dispatch(sup)
    assert runs(far) == [[plain.id]]  # a plain task is pipelined behind the running one
    sup.queue.push(latest)
    sup.queue.push(after)
    dispatch.dispatch(sup)
    assert runs(far) == []  # the latest-wins task waits for a free worker, and so does its follower
    worker.outstanding.clear()
    dispatch.dispatch(sup)
    assert runs(far) == [[latest.id, after.id]]  # a plain task may follow it


def test_a_budget_request_that_can_never_fit_fails_at_once(make_supervisor):
    budget = MemoryBudget(limit="1 GiB", max_wait=3600)
    sup, _ = make_supervisor(budget=budget)
    fake_worker(sup, 0)
    too_big = task(memory=2 << 30)
    sup.queue.push(too_big)
    dispatch.dispatch(sup)
    with pytest.raises(MemoryBudgetExceeded):
        too_big.future.result(0)
    assert sup.tally.failed == 1


def test_a_budget_request_that_may_fit_waits_max_wait(make_supervisor):
    budget = MemoryBudget(limit="1 GiB", max_wait=5)
    sup, clock = make_supervisor(budget=budget)
    _, far = fake_worker(sup, 0)
    waiting = task(memory=(1 << 30) - 1)  # fits the limit, not beside this process's memory
    sup.queue.push(waiting)
    dispatch.dispatch(sup)
    assert not waiting.future.done() and sup.budget_blocked and runs(far) == []
    clock.now += 4.9
    dispatch.dispatch(sup)
    assert not waiting.future.done()
    clock.now += 0.2
    dispatch.dispatch(sup)
    with pytest.raises(MemoryBudgetExceeded):
        waiting.future.result(0)


# ----- deaths ------------------------------------------------------------------------------


def die(sup: Supervisor, worker: Worker, exitcode: int, running: Task | None = None) -> None:
    if running is not None:
        worker.ledger.started.value = running.id
    worker.process.exitcode = exitcode
    deaths.on_exit(sup, worker)


def test_a_death_fails_the_running_task_and_requeues_the_ones_behind(make_supervisor):
    sup, _ = make_supervisor()
    worker, _ = fake_worker(sup, 0)
    running, behind = task(), task()
    for t in (running, behind):
        t.claim()
        worker.outstanding.append(t)
    die(sup, worker, -9, running)
    with pytest.raises(WorkerCrashed, match="SIGKILL"):
        running.future.result(0)
    assert sup.queue.pop_for(0) is behind
    assert 0 not in sup.workers  # the loop starts a replacement in the lane
    assert (sup.tally.restarts, sup.tally.failed, sup.lane_vacated) == (1, 1, {0: "died"})


def test_a_death_with_retries_left_requeues_the_running_task(make_supervisor):
    sup, _ = make_supervisor(retries=1)
    worker, _ = fake_worker(sup, 0)
    running = task()
    running.claim()
    worker.outstanding.append(running)
    die(sup, worker, -11, running)
    assert not running.future.done() and running.attempts == 1
    assert sup.queue.pop_for(0) is running and sup.tally.retried == 1


def test_idle_deaths_break_the_pool_only_when_they_come_fast(make_supervisor):
    sup, clock = make_supervisor(workers=1)
    for _ in range(deaths.STORM_DEATHS - 1):
        die(sup, fake_worker(sup, 0)[0], 1)
        clock.now += deaths.STORM_SECONDS / deaths.STORM_DEATHS
    assert sup.broken is None
    clock.now += deaths.STORM_SECONDS  # the earlier deaths are out of the window
    die(sup, fake_worker(sup, 0)[0], 1)
    assert sup.broken is None
    for _ in range(deaths.STORM_DEATHS - 1):
        die(sup, fake_worker(sup, 0)[0], 1)
    assert isinstance(sup.broken, BrokenPool)


def test_max_restarts_breaks_the_pool(make_supervisor):
    sup, clock = make_supervisor(max_restarts=2)
    for death in range(3):
        worker, _ = fake_worker(sup, 0)
        running = task()
        running.claim()
        worker.outstanding.append(running)
        clock.now += 60  # never a storm
        die(sup, worker, -9, running)
        assert (sup.broken is None) == (death < 2)
    assert "max_restarts=2" in str(sup.broken)


def test_a_worker_stopped_while_starting_exits_without_counting_a_death(make_supervisor):
    sup, _ = make_supervisor()
    worker, _ = fake_worker(sup, 0)
    worker.state = State.STARTING
    sup.stop(worker)  # e.g. a spare still starting when the pool shuts down
    sup.on_message(worker, Ready(worker.pid))  # its handshake was already on the way
    assert worker.state is State.STOPPING
    die(sup, worker, 0)
    assert (sup.tally.restarts, sup.lane_vacated, len(sup.failures)) == (0, {}, 0)


def test_a_ready_spare_takes_a_recycled_workers_lane_and_its_work_at_once(make_supervisor):
    sup, _ = make_supervisor(workers=1, recycle=Recycle(tasks=1, spares=1))
    sup.started.set()
    retired, _ = fake_worker(sup, 0)
    spare, far = fake_worker(sup, SPARE)
    del sup.workers[SPARE]
    sup.spares.append(spare)
    waiting = task()
    sup.queue.push(waiting)
    sup.retire(retired, "tasks")
    dispatch.dispatch(sup)  # the lane is empty: nothing to send yet
    assert sup._ensure_workers()  # the spare took the lane ...
    dispatch.dispatch(sup)  # ... so the loop dispatches again in the same turn
    assert sup.workers[0] is spare and runs(far) == [[waiting.id]]
    sup.forget(retired)


def test_recycle_spares_start_only_while_work_is_waiting(make_supervisor):
    sup, _ = make_supervisor(recycle=Recycle(tasks=10, spares=1))
    sup.started.set()
    assert not sup._wants_spare()
    sup.queue.push(task())
    assert sup._wants_spare()
