"""What the remote supervisor does when a worker dies, overruns or fails to start.

As on the local pool (:mod:`memwise.pool.deaths`):

- a worker that died while running a task fails that task alone (``WorkerCrashed`` with the
  pid, node and the engine's account of the death), or re-runs it within ``retries``; the
  calls sent behind it never started: they go back to their places in the queue, and a
  replacement starts in the same lane;
- a task past its ``timeout`` fails with ``TaskTimeout``; its worker is killed and replaced;
- a worker that fails to start (initializer raised, died or hung past ``init_timeout``)
  raises ``WorkerInitError`` from the pool's constructor during start-up, and counts as a
  failed start later; ``STORM_DEATHS`` failed starts within ``STORM_SECONDS`` break the pool,
  as does dying more than ``max_restarts`` times.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from memwise.errors import BrokenPool, TaskTimeout, WorkerCrashed, WorkerInitError
from memwise.pool.remote_lane import STORM_DEATHS, STORM_SECONDS, Lane, Outcome

if TYPE_CHECKING:
    from memwise.pool.remote_lanes import LaneSupervisor


def on_death(sup: LaneSupervisor, lane: Lane, outcome: Outcome) -> None:
    running = lane.sent.popleft().task
    requeue_rest(sup, lane)
    sup.emit("worker_died", lane=lane, task_id=running.id if running else None,
             reason=outcome.detail)  # fmt: skip
    if running is None:
        on_start_failure(sup, lane, WorkerInitError(
            f"the worker of lane {lane.index} died before it was ready: {outcome.detail}"
        ))  # fmt: skip
        return
    sup.counts["restarts"] += 1
    lane.restarts += 1
    running.attempts += 1
    retries = sup.config.retries
    if running.attempts <= retries:
        sup.counts["retried"] += 1
        sup.emit("task_retried", task=running, lane=lane, reason="worker died",
                 attempt=running.attempts)  # fmt: skip
        sup.queue.push_back([running])
    else:
        sup.fail(running, WorkerCrashed(
            f"the worker (pid {lane.pid}, node {lane.node}) running {running} died: "
            f"{outcome.detail}; tried {running.attempts} time(s) (retries={retries}); other "
            "tasks are unaffected",
            lane.pid, None, str(running),
        ), lane)  # fmt: skip
    limit = sup.config.max_restarts
    if limit is not None and sup.counts["restarts"] > limit:
        sup.break_pool(BrokenPool(
            f"workers died {sup.counts['restarts']} times, more than max_restarts={limit}; "
            f"the last: {outcome.detail}"
        ))  # fmt: skip
        return
    sup.replace(lane, "died")


def requeue_rest(sup: LaneSupervisor, lane: Lane) -> None:
    """The calls behind the running one never started: back to their places."""
    rest = [sent.task for sent in lane.sent if sent.task is not None]
    lane.sent.clear()
    sup.queue.push_back(rest)


def on_start_failure(sup: LaneSupervisor, lane: Lane, error: WorkerInitError) -> None:
    if not sup.started.is_set():
        sup.startup_error = error
        sup.break_pool(error)
        return
    now = time.monotonic()
    sup.failures.append(now)
    while sup.failures and sup.failures[0] < now - STORM_SECONDS:
        sup.failures.popleft()
    if len(sup.failures) >= STORM_DEATHS:
        sup.break_pool(BrokenPool(
            f"{len(sup.failures)} workers failed to start within {STORM_SECONDS:.0f} s; "
            f"the last: {error}. Fix the cause and create a new pool"
        ))  # fmt: skip
        return
    requeue_rest(sup, lane)
    sup.replace(lane, "start failed")


def until_deadline(sup: LaneSupervisor) -> float | None:
    """Seconds until the nearest deadline (a running task's timeout, a start's
    ``init_timeout``), or None if there is none."""
    with sup.lock:
        deadlines = [d for lane in sup.lanes.values() if (d := _deadline(sup, lane))]
    return None if not deadlines else max(0.0, min(deadlines) - time.monotonic())


def _deadline(sup: LaneSupervisor, lane: Lane) -> float | None:
    if not lane.sent:
        return None
    task = lane.sent[0].task
    limit = sup.config.init_timeout if task is None else task.timeout
    return None if limit is None else lane.head_since + limit


def enforce_deadlines(sup: LaneSupervisor) -> None:
    now = time.monotonic()
    for lane in list(sup.lanes.values()):
        deadline = _deadline(sup, lane)
        if deadline is None or deadline > now:
            continue
        task = lane.sent.popleft().task
        requeue_rest(sup, lane)
        if task is None:
            on_start_failure(sup, lane, WorkerInitError(
                f"the worker of lane {lane.index} did not get ready within init_timeout="
                f"{sup.config.init_timeout} s; it was killed"
            ))  # fmt: skip
            continue
        sup.counts["timed_out"] += 1
        sup.emit("task_timed_out", task=task, lane=lane, seconds=now - lane.head_since)
        sup.fail(task, TaskTimeout(
            f"{task} ran longer than its timeout of {task.timeout} s; its worker "
            f"(pid {lane.pid}, node {lane.node}) was killed and replaced"
        ), lane)  # fmt: skip
        sup.replace(lane, "timeout")
