"""How the supervisor hands queued tasks to workers.

Round robin over the READY workers, one task at a time, so a burst spreads evenly. Three
refinements, each for a measured reason:

- **Pipelining.** While tasks are short (by a moving average of their run time), a worker is
  sent the next ones before it is free, up to about ``PIPELINE_SECONDS`` of expected work:
  a round trip through the supervisor per task would otherwise cap throughput. Latest-wins
  tasks are never pipelined (they must stay cancellable until a worker is free), nor large
  messages (a send to a busy worker must fit in the socket buffer, or the supervisor blocks).
- **Stealing.** When a task runs far longer than its peers (``STEAL_SECONDS``), the tasks
  pipelined behind it are taken back (see :mod:`memwise.pool.ledger`) and go to free workers.
- **Admission.** With a :class:`~memwise.budget.MemoryBudget`, a task starts only when its
  reservation fits; the tasks behind it wait rather than jump the queue and starve it.

Idle workers are then lent to submitting threads for the direct path (see
``Supervisor._send_direct_locked``) while nothing is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

from memwise import _oob
from memwise.pool._protocol import Run, TaskEntry, encode
from memwise.pool.handle import State, Worker
from memwise.pool.stats import key_repr
from memwise.pool.task import Task

if TYPE_CHECKING:
    from memwise.pool.supervisor import Supervisor

# Tasks are pipelined (sent before the worker is free) only while the typical task is short,
# so that long tasks are never stuck behind each other on one worker while another is idle.
PIPELINE_SECONDS = 0.002
MAX_PIPELINE_DEPTH = 64
# A message sent to a busy worker must fit in the socket buffer, or the supervisor would block
# until that worker finished its task (and deadlock if the worker is sending a large result).
PIPELINE_BYTES = 16 * 1024
# How many warm result slots of one size a worker may be given back at once.
RESTOCK_DEPTH = 2
# A task running this long while others wait behind it on the same worker has them taken back.
STEAL_SECONDS = 0.01


def _pipeline_depth(sup: Supervisor) -> int:
    if sup.service_time is None or sup.config.recycle.limits_pipelining:
        return 1
    depth = int(PIPELINE_SECONDS / max(sup.service_time, 1e-6))
    return max(1, min(MAX_PIPELINE_DEPTH, depth))


def dispatch(sup: Supervisor) -> None:
    """Hand queued tasks to READY workers, round-robin, then lend out the idle ones."""
    sup.reclaim_lent_workers()
    if sup.broken is not None:
        return
    ready = [w for w in sup.workers.values() if w.state is State.READY and w.kill_reason is None]
    sup.budget_blocked = False
    if sup.queue:
        depth = _pipeline_depth(sup)
        batches: dict[Worker, list[Task]] = {w: [] for w in ready}
        # Payload bytes sent to each worker and not yet read by it, kept up to date as the
        # batches grow: summing them per task would cost O(depth) for every task dispatched.
        unread = {w: sum(len(t.payload) for t in w.outstanding) for w in ready}
        progress = True
        try:
            while progress and sup.queue and not sup.budget_blocked:
                progress = False
                for worker, batch in batches.items():
                    if not _has_room(worker, batch, depth, sup.clock()):
                        continue
                    task = _next_for(sup, worker, batch, unread[worker])
                    if task is not None:
                        batch.append(task)
                        unread[worker] += len(task.payload)
                        progress = True
            for worker in list(batches):
                batch = batches.pop(worker)
                if batch:
                    _send(sup, worker, batch)
        except BaseException as exc:
            # Claimed tasks not yet sent are in no list break_pool sees: fail them here.
            for batch in batches.values():
                for task in batch:
                    task.future.set_exception(exc)
            raise
    # Tasks sent directly would bypass the budget, so a budgeted pool lends no worker.
    if not sup.queue and not sup.closing and sup.config.budget is None:
        with sup.lock:
            lanes = sup.lanes.count
            sup.idle = {
                w.lane: w for w in ready if not w.outstanding and not w.retiring and w.lane < lanes
            }


def _has_room(worker: Worker, batch: list[Task], depth: int, now: float) -> bool:
    if worker.retiring or len(worker.outstanding) + len(batch) >= depth:
        return False
    # A task running much longer than usual may run for a long time yet: queueing work
    # behind it would keep that work waiting while other workers are free.
    return not worker.outstanding or now - worker.busy_since < PIPELINE_SECONDS


def _next_for(sup: Supervisor, worker: Worker, batch: list[Task], unread: int) -> Task | None:
    """The next task for ``worker``, which has ``batch`` coming and ``unread`` bytes unread."""
    busy = bool(worker.outstanding or batch)
    general = worker.lane < sup.lanes.count  # a draining lane runs only its pinned keys
    while True:
        keyed, key = sup.queue.peek_key(worker.lane, general)
        if keyed and key_change(sup, worker, key, batch):
            if not busy:
                sup.retire(worker, "key")
            return None
        task = sup.queue.pop_for(worker.lane, general)
        if task is None:
            return None
        if busy and not _pipelinable(task, unread):
            sup.queue.push_back([task])
            return None
        if not _admit(sup, task):
            return None
        sup.forget_latest(task)  # started or cancelled: nothing newer can drop it now
        if task.claim():
            return task
        task.release_memory()
        if task.dropped:
            sup.dropped_queued -= 1  # counted as cancelled when it was dropped
        else:  # cancelled by its caller while queued
            sup.tally.cancelled += 1
            sup.task_event("task_cancelled", task, reason="cancelled")


def _pipelinable(task: Task, unread: int) -> bool:
    """Whether ``task`` may be queued on a busy worker that has ``unread`` bytes to read.

    Not a latest-wins task: it must stay cancellable until a worker is actually free.
    """
    if task.coalesce is not None:
        return False
    return len(task.payload) + unread <= PIPELINE_BYTES


def _admit(sup: Supervisor, task: Task) -> bool:
    """Reserve the task's memory in the budget; if there is no room, keep it queued.

    Tasks wait in priority order behind a task that does not fit (no smaller task jumps
    the queue and starves it) and fail once they have waited ``max_wait``.
    """
    budget = sup.config.budget
    if budget is None or task.dropped or task.future.cancelled():
        return True
    amount = task.memory or (sup.peaks.get(task.label, 0) if budget.learn else 0)
    task.reservation = budget.try_reserve(amount)
    if task.reservation is not None:
        return True
    now = sup.clock()
    if task.blocked_since is None:
        task.blocked_since = now
    never_fits = amount > budget.limit
    if (never_fits or now - task.blocked_since >= budget.max_wait) and task.claim():
        sup.forget_latest(task)
        sup.tally.failed += 1
        sup.task_event("task_failed", task, reason="MemoryBudgetExceeded")
        task.future.set_exception(budget.exceeded(amount, now - task.blocked_since))
        return False
    sup.queue.push_back([task])
    sup.budget_blocked = True
    return False


def key_change(sup: Supervisor, worker: Worker, key: Hashable, batch: Sequence[Task] = ()) -> bool:
    if not sup.config.recycle.on_key_change:
        return False
    keys = [t.key for t in (*worker.outstanding, *batch) if t.key is not None]
    last = keys[-1] if keys else worker.last_key
    return last is not None and key is not None and key != last


def _send(sup: Supervisor, worker: Worker, batch: list[Task]) -> None:
    if not worker.outstanding:
        worker.busy_since = sup.clock()
    message = run_message(worker, batch)
    try:
        worker.channel.send(message)
    except OSError:
        # The worker died before it could read: nothing ran, so nothing counts as tried.
        for task in batch:
            task.release_memory()
        sup.queue.push_back(batch)
        return
    worker.outstanding.extend(batch)
    if sup.events.subscriptions:
        for task in batch:
            if not task.announced:
                task.announced = True
                sup.task_event("task_started", task, worker, key=key_repr(task.key))
    keys = [t.key for t in batch if t.key is not None]
    if keys:
        worker.last_key = keys[-1]


def run_message(worker: Worker, batch: list[Task]) -> bytes:
    """The one place a Run is built: ``batch`` for ``worker``, lending it their slots."""
    entries = [TaskEntry(t.id, t.payload, t.lend_slots(worker.pid)) for t in batch]
    return encode(Run(entries, restock(worker), worker.epoch))


def restock(worker: Worker) -> tuple[Any, ...]:
    """Warm free slots of the sizes this worker's results take, sent with its next task."""
    if not worker.result_sizes:
        return ()
    gifts = _oob.restock(worker.result_sizes, worker.pid)
    for gift in gifts:
        worker.result_sizes[gift.nbytes] -= 1
    worker.result_sizes = {k: v for k, v in worker.result_sizes.items() if v > 0}
    return gifts


def steal(sup: Supervisor, worker: Worker) -> None:
    """Take back the tasks queued behind a task that runs far longer than usual.

    Pipelining bets that tasks stay short; when one does not, the tasks sent behind it go
    back to the queue, where any free worker takes them (see :mod:`memwise.pool.ledger`).
    """
    if take_back(sup, worker):
        sup.tally.stolen += 1


def take_back(sup: Supervisor, worker: Worker) -> bool:
    """Return to the queue every task sent to ``worker`` that it has not started."""
    sup.reclaim_lent_workers()  # the queue is no longer empty: nothing may overtake these
    running = worker.ledger.revoke(worker.epoch)
    if running is None:
        return False
    worker.epoch += 1
    # Tasks up to the running one have started (their results may still be in the pipe);
    # the ones after it have not, and now never will on this worker.
    ids = [t.id for t in worker.outstanding]
    keep = ids.index(running) + 1 if running in ids else 0
    stolen = list(worker.outstanding)[keep:]
    worker.outstanding = deque(list(worker.outstanding)[:keep])
    for task in stolen:
        task.release_memory()
        if task.outgoing is not None:
            _oob.returned(list(task.outgoing.handles), worker.pid)
    sup.queue.push_back(stolen)
    return bool(stolen)
