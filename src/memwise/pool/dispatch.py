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
:mod:`memwise.pool.inbox`) while nothing is queued.

The dispatcher also owns what decides *which* queued task is live: latest-wins bookkeeping
(a newer task of the same ``coalesce`` tag drops the queued one) and the count of tasks
dropped but still in the queue (it drops them lazily, when popped).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping

from memwise import _oob
from memwise.pool._protocol import Done
from memwise.pool.config import PoolConfig
from memwise.pool.crew import Crew
from memwise.pool.handle import State, Worker
from memwise.pool.inbox import Inbox
from memwise.pool.lanes import Lanes
from memwise.pool.queue import TaskQueue
from memwise.pool.stats import Tally, key_repr
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task

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
PEAK_DECAY = 0.9  # per task, of a function's learned peak


class Dispatcher:
    """Hands the queue's tasks to the crew's READY workers (supervisor thread only)."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        queue: TaskQueue,
        crew: Crew,
        inbox: Inbox,
        lanes: Lanes,
        tally: Tally,
        hub: EventHub,
    ) -> None:
        self._config = config
        self._clock = config.clock
        self._queue = queue
        self._crew = crew
        self._inbox = inbox
        self._lanes = lanes
        self._tally = tally
        self._hub = hub
        # The newest queued task of each coalesce tag (latest wins).
        self._latest: dict[Hashable, Task] = {}
        # Cancelled tasks still in ``queue`` (it drops them lazily, when popped), so that
        # snapshots count them as cancelled and not also as queued.
        self._dropped = 0
        self._service_time: float | None = None  # moving average of task run times
        self._peaks: dict[str, int] = {}  # learned peak memory per function (MemoryBudget.learn)
        self._budget_blocked = False  # the head of the queue waits for room in the budget

    # ----- what is queued ----------------------------------------------------------------

    def enqueue(self, tasks: list[Task]) -> None:
        """Queue the tasks handed over by submitting threads, in submission order."""
        push = self._queue.push
        for task in tasks:
            if task.coalesce is not None:
                # Latest wins: drop the queued task with the same tag, if it has not started.
                previous = self._latest.get(task.coalesce)
                if previous is not None and self._drop(previous, "coalesced"):
                    self._dropped += 1  # it stays in the queue until popped
                self._latest[task.coalesce] = task
            push(task)

    def cancel_queued(self, reason: str) -> None:
        """Cancel every queued task (shutdown with ``cancel_futures``)."""
        self._dropped = 0
        for task in self._queue.drain():
            self._drop(task, reason)

    def drain(self) -> list[Task]:
        """Remove every queued task (the pool broke); the caller fails them."""
        self._dropped = 0
        return self._queue.drain()

    def queued(self) -> int:
        """Tasks waiting in the queue, not counting those already cancelled."""
        return len(self._queue) - self._dropped

    def budget_waiting(self) -> int:
        """Tasks waiting for room in the memory budget."""
        return len(self._queue) if self._budget_blocked else 0

    def learned_peaks(self) -> Mapping[str, int]:
        return self._peaks

    def _drop(self, task: Task, reason: str) -> bool:
        """Cancel a queued task; True if it had not started (and now counts as cancelled)."""
        self._forget_latest(task)
        if not task.drop():
            return False
        self._tally.cancelled += 1
        self._hub.announce_task("task_cancelled", task, reason=reason)
        return True

    def _forget_latest(self, task: Task) -> None:
        """``task`` leaves the queue for good: it can no longer be the newest of its tag."""
        if task.coalesce is not None and self._latest.get(task.coalesce) is task:
            del self._latest[task.coalesce]

    # ----- handing out -------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued tasks to READY workers, round-robin, then lend out the idle ones."""
        self._inbox.reclaim()
        if self._inbox.broken is not None:
            return
        # A worker with a call gets nothing: held, its reply comes down the other pipe and
        # must stay the first of its replies; given back and not accounted for yet (where
        # workers retire after a task), it may have stopped taking tasks.
        ready = [
            w
            for w in self._crew.in_lanes()
            if w.state is State.READY and w.kill_reason is None and w.calling is None
        ]
        self._budget_blocked = False
        queue = self._queue
        if queue:
            depth = self._pipeline_depth()
            batches: dict[Worker, list[Task]] = {w: [] for w in ready}
            # Payload bytes sent to each worker and not yet read by it, kept up to date as
            # the batches grow: summing them per task would cost O(depth) per task dispatched.
            unread = {w: sum(len(t.payload) for t in w.outstanding) for w in ready}
            progress = True
            try:
                while progress and queue and not self._budget_blocked:
                    progress = False
                    for worker, batch in batches.items():
                        if not _has_room(worker, batch, depth, self._clock()):
                            continue
                        task = self._next_for(worker, batch, unread[worker])
                        if task is not None:
                            batch.append(task)
                            unread[worker] += len(task.payload)
                            progress = True
                for worker in list(batches):
                    batch = batches.pop(worker)
                    if batch:
                        self._send(worker, batch)
            except BaseException as exc:
                # Claimed tasks not yet sent are in no list break_pool sees: fail them here.
                for batch in batches.values():
                    for task in batch:
                        task.future.set_exception(exc)
                raise
        # Tasks sent directly would bypass the budget, so a budgeted pool lends no worker.
        if not queue and not self._inbox.closing and self._config.budget is None:
            lanes = self._lanes.count
            self._inbox.lend(
                [w for w in ready if not w.outstanding and not w.retiring and w.lane < lanes],
                lanes,
            )

    def _pipeline_depth(self) -> int:
        if self._service_time is None or self._config.recycle.limits_pipelining:
            return 1
        depth = int(PIPELINE_SECONDS / max(self._service_time, 1e-6))
        return max(1, min(MAX_PIPELINE_DEPTH, depth))

    def _next_for(self, worker: Worker, batch: list[Task], unread: int) -> Task | None:
        """The next task for ``worker``, which has ``batch`` coming and ``unread`` bytes unread."""
        busy = bool(worker.outstanding or batch)
        general = worker.lane < self._lanes.count  # a draining lane runs only its pinned keys
        queue = self._queue
        while True:
            keyed, key = queue.peek_key(worker.lane, general)
            if keyed and self._config.recycle.on_key_change and worker.key_changes(key, batch):
                if not busy:
                    self._crew.retire(worker, "key")
                return None
            task = queue.pop_for(worker.lane, general)
            if task is None:
                return None
            if busy and not _pipelinable(task, unread):
                queue.push_back([task])
                return None
            if not self._admit(task):
                return None
            self._forget_latest(task)  # started or cancelled: nothing newer can drop it now
            if task.claim():
                return task
            task.release_memory()
            if task.dropped:
                self._dropped -= 1  # counted as cancelled when it was dropped
            else:  # cancelled by its caller while queued
                self._tally.cancelled += 1
                self._hub.announce_task("task_cancelled", task, reason="cancelled")

    def _admit(self, task: Task) -> bool:
        """Reserve the task's memory in the budget; if there is no room, keep it queued.

        Tasks wait in priority order behind a task that does not fit (no smaller task jumps
        the queue and starves it) and fail once they have waited ``max_wait``.
        """
        budget = self._config.budget
        if budget is None or task.dropped or task.future.cancelled():
            return True
        amount = task.memory or (self._peaks.get(task.label, 0) if budget.learn else 0)
        task.reservation = budget.try_reserve(amount)
        if task.reservation is not None:
            return True
        now = self._clock()
        if task.blocked_since is None:
            task.blocked_since = now
        never_fits = amount > budget.limit
        if (never_fits or now - task.blocked_since >= budget.max_wait) and task.claim():
            self._forget_latest(task)
            self._tally.failed += 1
            self._hub.announce_task("task_failed", task, reason="MemoryBudgetExceeded")
            task.future.set_exception(budget.exceeded(amount, now - task.blocked_since))
            return False
        self._queue.push_back([task])
        self._budget_blocked = True
        return False

    def _send(self, worker: Worker, batch: list[Task]) -> None:
        if not worker.outstanding:
            worker.busy_since = self._clock()
        message = worker.run_message(batch)
        try:
            worker.channel.send(message)
        except OSError:
            # The worker died before it could read: nothing ran, so nothing counts as tried.
            for task in batch:
                task.release_memory()
            self._queue.push_back(batch)
            return
        worker.outstanding.extend(batch)
        if self._hub.subscriptions:
            for task in batch:
                if not task.announced:
                    task.announced = True
                    self._hub.announce_task("task_started", task, worker, key=key_repr(task.key))
        keys = [t.key for t in batch if t.key is not None]
        if keys:
            worker.last_key = keys[-1]

    # ----- what finished tasks teach -----------------------------------------------------

    def learn(self, worker: Worker, task: Task, done: Done) -> None:
        """Note what a finished task says about the next ones (run time, memory, result slots)."""
        if done.peak is not None:
            # The largest recent peak, decaying so that one outlier does not block forever.
            label = task.label
            self._peaks[label] = max(done.peak, int(self._peaks.get(label, 0) * PEAK_DECAY))
        for gift in done.gifts:
            produced = worker.result_sizes
            produced[gift.nbytes] = min(produced.get(gift.nbytes, 0) + 1, RESTOCK_DEPTH)
        seconds = done.seconds
        average = self._service_time
        self._service_time = seconds if average is None else 0.8 * average + 0.2 * seconds

    # ----- taking back -------------------------------------------------------------------

    def steal_overdue(self, now: float) -> float | None:
        """Take back the tasks queued behind overlong ones; when to look next (or None)."""
        nearest: float | None = None
        for worker in list(self._crew.in_lanes()):
            if len(worker.outstanding) > 1 and worker.kill_reason is None:
                steal_at = worker.busy_since + STEAL_SECONDS
                if steal_at <= now:
                    if self.take_back(worker):
                        self._tally.stolen += 1
                    nearest = now  # dispatch the stolen tasks without waiting for an event
                elif nearest is None or steal_at < nearest:
                    nearest = steal_at
        return nearest

    def budget_recheck(self, now: float) -> float | None:
        """When to look at the budget again for a blocked queue (None: nothing waits)."""
        budget = self._config.budget
        return now + budget.poll if self._budget_blocked and budget is not None else None

    def take_back(self, worker: Worker) -> bool:
        """Return to the queue every task sent to ``worker`` that it has not started.

        Pipelining bets that tasks stay short; when one does not (or the worker is recycled),
        the tasks sent behind it go back to the queue, where any free worker takes them (see
        :mod:`memwise.pool.ledger`).
        """
        self._inbox.reclaim()  # the queue is no longer empty: nothing may overtake these
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
        self._queue.push_back(stolen)
        return bool(stolen)


def _has_room(worker: Worker, batch: list[Task], depth: int, now: float) -> bool:
    if worker.retiring or len(worker.outstanding) + len(batch) >= depth:
        return False
    # A task running much longer than usual may run for a long time yet: queueing work
    # behind it would keep that work waiting while other workers are free.
    return not worker.outstanding or now - worker.busy_since < PIPELINE_SECONDS


def _pipelinable(task: Task, unread: int) -> bool:
    """Whether ``task`` may be queued on a busy worker that has ``unread`` bytes to read.

    Not a latest-wins task: it must stay cancellable until a worker is actually free.
    """
    if task.coalesce is not None:
        return False
    return len(task.payload) + unread <= PIPELINE_BYTES
