"""What user threads share with a pool's supervisor thread, all under one lock.

Submitting threads hand tasks over here and poke a wake-up pipe; the supervisor takes them in
when it wakes. Here too is the one exception to "only the supervisor touches a worker": while
nothing is queued, the supervisor lends its idle workers to user threads, which use them two
ways.

- The *direct path* (``submit``): the submitting thread sends its task straight to a lent
  worker; the supervisor reads the reply. One hop through the supervisor thread saved.
- The *call path* (``WorkerPool.call``): the calling thread sends its task to a lent worker
  with the reply to come down the worker's reply pipe, reads it itself, completes the future
  and gives the worker back (:meth:`Inbox.complete_call`); the supervisor only accounts for
  it later. No hop through the supervisor at all, which is the floor for a lone call: the
  thread waits on the worker directly.

The rules that make this safe are stated once, at ``_lent``, and every method that touches a
lent or held worker is in this module.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import NamedTuple

from memwise.pool._protocol import Done, decode
from memwise.pool.handle import State, Worker
from memwise.pool.outcome import outcome, settle
from memwise.pool.stats import key_repr
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task

DIRECT_BYTES = 1 << 20  # largest payload a submitting thread writes to a worker itself
MAX_QUIET_ANSWERS = 256  # calls given back before the supervisor is woken to account for them


class Answer(NamedTuple):
    """A worker a calling thread gives back, and how its call ended (:meth:`Inbox.give_back`)."""

    worker: Worker
    task: Task
    done: Done | None  # the reply, read; None: the worker exited first, or nobody waited
    error: BaseException | None  # with ``done``: how the task failed (None: it succeeded)
    abandoned: bool  # the caller stopped waiting (interrupted): the supervisor reads the reply


class Delivery(NamedTuple):
    """What the supervisor takes in when it wakes (see :meth:`Inbox.collect`)."""

    tasks: list[Task]  # handed over, in submission order
    answers: list[Answer]  # workers given back by calling threads, in order
    cancel_queued: bool  # shutdown(cancel_futures=True) was asked
    terminate: BaseException | None  # fail everything with this and kill every worker


class Inbox:
    """The tasks handed over, the workers lent, the wake-up pipe, and whether the pool is open.

    ``lock`` guards every field; it is taken after the supervisor's state lock when both are
    needed (see :mod:`memwise.pool.supervisor`). Methods named ``..._locked`` expect it held.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        hub: EventHub,
        on_key_change: bool,
        watch_every_task: bool,
        relend: bool,
    ) -> None:
        self.lock = threading.Lock()
        self._clock = clock
        self._hub = hub
        self._on_key_change = on_key_change  # Recycle(on_key_change=): a lent worker may refuse
        # Hard memory limits: the supervisor polls the memory of every busy worker, so it must
        # hear of every task sent directly (tasks with a timeout are always announced).
        self._watch_every_task = watch_every_task
        # Tasks handed over by submitting threads, not yet in the supervisor's queue.
        self._incoming: deque[Task] = deque()
        # The loan invariant. READY workers with nothing to do, by lane, that a user thread
        # may send one task to (and then removes from here). The supervisor lends them
        # (``lend``) only while its queue and ``_incoming`` are empty, so a direct task never
        # overtakes a queued one; it takes every loan back (``reclaim``) before it sends to,
        # stops, retires or forgets any worker, and anything that queues a task takes them
        # back first. Between a ``reclaim`` and the next ``lend``, no thread but the
        # supervisor sends to a worker.
        #
        # The call path adds two rules. A worker is *held* (``worker.held``) from the moment
        # a calling thread takes it from here until that thread gives it back: the supervisor
        # does not send to it, and handles its exit only once it is given back (``defer_exit``);
        # it may kill it, which the calling thread sees. And a calling thread may put the
        # worker it gives back here again at once, but only while ``_lendable`` (between a
        # ``lend`` and the next ``reclaim``: the queue is empty and nothing the supervisor
        # does involves the loans), and only in pools whose workers are never retired
        # because of a task (``relend``).
        self._lent: dict[int, Worker] = {}
        self._lendable = False
        self._lane_count = 0  # lanes open when the workers were lent (a resize reclaims)
        self._relend = relend
        self._answers: list[Answer] = []
        self._poked = False  # a byte is in the wake-up pipe
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Read by anyone without the lock (each is set once, under it, by this class only):
        self.closing = False  # no new task is accepted (close, terminate)
        self.broken: BaseException | None = None  # why the pool broke (break_locked)
        self._cancel_queued = False
        self._terminate: BaseException | None = None

    @property
    def wake_fd(self) -> int:
        """The read end of the wake-up pipe, for the supervisor's selector."""
        return self._wake_r

    def has_incoming(self) -> bool:
        return bool(self._incoming)

    def incoming_locked(self) -> Collection[Task]:
        """The tasks handed over and not yet taken in (read only; for snapshots)."""
        return self._incoming

    # ----- submitting threads ------------------------------------------------------------

    def hand_over_locked(self, task: Task) -> None:
        """Send ``task`` to a lent worker if one fits, else queue it for the supervisor."""
        # Large inline payloads are queued: writing them here would hold the lock, and so
        # every other submitter and the supervisor, for as long as the copy takes.
        direct = self._lent and not self._incoming and len(task.payload) <= DIRECT_BYTES
        if direct and self._send_direct_locked(task):
            return
        self._incoming.append(task)
        self.poke_locked()

    def _send_direct_locked(self, task: Task) -> bool:
        """Hand ``task`` to a lent worker from the submitting thread; False if none fits."""
        worker = self._take_lent_locked(task)
        if worker is None:
            return False
        worker.outstanding.append(task)
        self._send_locked(worker, task, reply=False)
        return True

    def _take_lent_locked(self, task: Task) -> Worker | None:
        """Take a lent worker ``task`` may go to, or None."""
        if task.lane is None:
            return self._lent.pop(next(iter(self._lent)))
        candidate = self._lent.get(task.lane)
        if candidate is None or (self._on_key_change and candidate.key_changes(task.key)):
            return None
        return self._lent.pop(task.lane)

    def _send_locked(self, worker: Worker, task: Task, reply: bool) -> None:
        message = worker.run_message([task], reply)
        task.claim()
        if self._hub.subscriptions:
            task.announced = True
            self._hub.announce_task("task_started", task, worker, key=key_repr(task.key))
        worker.busy_since = self._clock()
        if task.key is not None:
            worker.last_key = task.key
        try:
            worker.channel.send(message)
        except OSError:
            pass  # the worker died; the supervisor re-queues or fails the task with the others
        if task.timeout is not None or self._watch_every_task:
            self.poke_locked()  # the supervisor must start watching this task

    # ----- calling threads (the call path) -----------------------------------------------

    def hold_locked(self, task: Task) -> Worker | None:
        """Send ``task`` to a lent worker for its reply to come to this thread, which holds
        the worker until :meth:`give_back`; None if no worker fits (hand the task over)."""
        if not self._lent or self._incoming or len(task.payload) > DIRECT_BYTES:
            return None
        if self._watch_every_task:
            return None  # hard memory limits: the supervisor polls every busy worker
        worker = self._take_lent_locked(task)
        if worker is None:
            return None
        if worker.reply_poll is None:  # a platform without poll(): queue it instead
            self._lent[worker.lane] = worker
            return None
        worker.held = True
        worker.calling = task
        self._send_locked(worker, task, reply=True)
        return worker

    def complete_call(self, worker: Worker, task: Task) -> None:
        """On the calling thread, after :meth:`hold_locked`: wait for the reply, settle the
        future with it and give the worker back. If the worker exited first, the supervisor
        settles the future; if this thread is interrupted, it reads the reply too."""
        try:
            done = self.await_reply(worker)
        except BaseException:
            # (An interruption after the reply was read off the pipe and before it is
            # returned here loses the reply: the window is a few bytecodes.)
            self.abandon(worker, task)
            raise
        if done is None:
            self.give_back(worker, task, None, None)
            return
        ok, result = False, None
        try:
            ok, result = outcome(done, task)
        except BaseException as exc:  # interrupted while unpickling: the call fails with it
            result = exc
            raise
        finally:
            settle(task.future, ok, result)
            # The supervisor only accounts for it: the payload need not wait with it.
            self.give_back(worker, task, done._replace(payload=b""), None if ok else result)

    def await_reply(self, worker: Worker) -> Done | None:
        """Wait (without the lock) for the reply of the task sent to held ``worker``; None if
        the worker exited without one."""
        replies, poller = worker.replies, worker.reply_poll
        while True:
            for fd, _event in poller.poll():
                if fd != replies.fd:  # it exited: whatever it wrote first still counts
                    try:
                        messages = replies.drain()
                    except OSError:  # the pool ended and closed it
                        messages = []
                    return decode(messages[0]) if messages else None
                try:
                    messages = replies.receive()
                except (EOFError, OSError):
                    poller.unregister(replies.fd)  # it is exiting: wait for the sentinel
                    continue
                if messages:
                    return decode(messages[0])

    def give_back(
        self, worker: Worker, task: Task, done: Done | None, error: BaseException | None
    ) -> None:
        """End the hold on ``worker``: lend it again at once if the rules at ``_lent`` allow,
        and let the supervisor account for the call."""
        self._give_back(Answer(worker, task, done, error, abandoned=False))

    def abandon(self, worker: Worker, task: Task) -> None:
        """The calling thread stops waiting (it was interrupted): the supervisor reads the
        reply and completes the future."""
        self._give_back(Answer(worker, task, None, None, abandoned=True))

    def _give_back(self, answer: Answer) -> None:
        worker, done = answer.worker, answer.done
        with self.lock:
            if not worker.held:
                return  # given back already (an interruption on the way out)
            worker.held = False
            self._answers.append(answer)
            if done is not None:
                worker.idle_since = self._clock()  # for Recycle(idle=), before accounting
                if self._relend:
                    # Else the call stays on the worker until it is accounted for: it may be
                    # the task after which the worker retires, and it starts nothing more.
                    worker.calling = None
            relent = worker.calling is None and self._lendable and self._lendable_again(worker)
            if relent:
                self._lent[worker.lane] = worker
            # A call that succeeded and whose worker is lent again asks nothing of the
            # supervisor but to be counted, whenever it next wakes or a snapshot is taken:
            # waking it costs a lone caller more than the rest of its call (that thread takes
            # the GIL just as the next reply arrives). Anything else wakes it now: a worker it
            # did not get back may be what its queue waits for.
            quiet = (
                relent
                and done is not None
                and answer.error is None
                and not done.returns
                and not self.closing
                and not self._hub.subscriptions
                and len(self._answers) < MAX_QUIET_ANSWERS
            )
            if not quiet:
                self.poke_locked()

    def _lendable_again(self, worker: Worker) -> bool:
        """Whether a worker given back may go straight back to ``_lent`` (see the rules)."""
        return (
            not self._incoming
            and not worker.exit_deferred
            and worker.kill_reason is None
            and not worker.retiring
            and worker.state is State.READY
            and worker.lane < self._lane_count
        )

    def take_answers(self, worker: Worker) -> list[Answer]:
        """``worker``'s calls given back and not accounted for yet."""
        with self.lock:
            return self._take_answers_locked(lambda a: a.worker is worker)

    def take_quiet_answers(self) -> list[Answer]:
        """The calls given back that succeeded and ask nothing of the supervisor but to be
        counted (what a snapshot may account for on its own thread)."""
        with self.lock:
            if not self._relend:
                return []  # accounting for a call may retire its worker: supervisor's job
            return self._take_answers_locked(
                lambda a: a.done is not None and a.error is None and not a.worker.exit_deferred
            )

    def _take_answers_locked(self, wanted: Callable[[Answer], bool]) -> list[Answer]:
        taken = [a for a in self._answers if wanted(a)]
        if taken:
            self._answers = [a for a in self._answers if not wanted(a)]
        return taken

    def defer_exit(self, worker: Worker) -> bool:
        """Whether ``worker`` is held: then its exit is handled once it is given back."""
        with self.lock:
            if worker.held:
                worker.exit_deferred = True
            return worker.held

    def poke_locked(self) -> None:
        """Wake the supervisor."""
        # One byte in the pipe is enough to wake it; skipping the write while one is pending
        # saves a system call per submit during bursts.
        if not self._poked:
            self._poked = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def poke(self) -> None:
        with self.lock:
            self.poke_locked()

    def close(self, cancel_queued: bool) -> None:
        """Accept no new task; with ``cancel_queued``, cancel the queued ones."""
        with self.lock:
            self.closing = True
            self._cancel_queued = self._cancel_queued or cancel_queued
            self.poke_locked()

    def terminate(self, error: BaseException) -> None:
        """Ask the supervisor to fail everything with ``error`` and kill every worker."""
        with self.lock:
            self.closing = True
            self._terminate = self._terminate or error
            self.poke_locked()

    # ----- the supervisor thread ---------------------------------------------------------

    def collect(self) -> Delivery:
        """Empty the wake-up pipe and take what was handed over (taking the loans back if any
        task came: it is about to be queued)."""
        with self.lock:
            self._poked = False
            try:
                # At most one byte is ever pending (``_poked``): one read empties the pipe,
                # and a second would cost this thread a system call, and the GIL, per wake.
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
            tasks = list(self._incoming)
            if tasks:
                self.reclaim_locked()
                self._incoming.clear()
            answers, self._answers = self._answers, []
            cancel, self._cancel_queued = self._cancel_queued, False
            terminate, self._terminate = self._terminate, None
        return Delivery(tasks, answers, cancel, terminate)

    def lend(self, workers: list[Worker], lane_count: int) -> None:
        """Lend these idle workers (of lanes below ``lane_count``) to user threads; the queue
        must be empty."""
        with self.lock:
            self._lent = {w.lane: w for w in workers}
            self._lendable = True
            self._lane_count = lane_count

    def reclaim(self) -> None:
        """Take every loan back: from now on only the supervisor sends to its workers."""
        with self.lock:
            self.reclaim_locked()

    def reclaim_locked(self) -> None:
        self._lent.clear()
        self._lendable = False

    def break_locked(self, error: BaseException) -> list[Task] | None:
        """Mark the pool broken; the tasks handed over, or None if it already was."""
        if self.broken is not None:
            return None
        self.broken = error
        self.reclaim_locked()
        tasks = list(self._incoming)
        self._incoming.clear()
        return tasks

    def close_pipe(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
