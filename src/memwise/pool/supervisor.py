"""The supervisor: the one thread that owns every worker process of a pool.

User threads never touch a worker (one narrow, locked exception: ``_send_direct_locked``).
They append tasks to ``_incoming`` and poke a wake-up pipe; the supervisor waits on that pipe,
on every worker's connection and process sentinel, and on the nearest deadline, and does all
the rest: start workers, dispatch tasks, collect results, notice deaths, enforce timeouts,
recycle, restart. Having a single owner is what makes crash handling tractable: every case
runs on one thread, in order. The cases themselves live in :mod:`memwise.pool.deaths`.
"""

from __future__ import annotations

import os
import pickle
import selectors
import threading
import time
from collections import Counter, deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from memwise import _oob, _wire
from memwise.budget import MemoryBudget
from memwise.errors import BrokenPool, ClosedError, SerializationError, WorkerInitError
from memwise.memory import private_memory
from memwise.pool import deaths, dispatch, stats
from memwise.pool import worker as _worker_module
from memwise.pool.context import forget_main_hint, get_context
from memwise.pool.handle import State, Worker
from memwise.pool.ledger import Ledger
from memwise.pool.policies import Recycle
from memwise.pool.queue import TaskQueue
from memwise.pool.task import Task
from memwise.shared import sweep_orphans
from memwise.shared._names import current_owner

SPARE = -1  # the slot number of spare workers
START_RETRY_SECONDS = 0.2  # after the OS refused a new process
PEAK_DECAY = 0.9  # per task, of a function's learned peak
DIRECT_BYTES = 1 << 20  # largest payload a submitting thread writes to a worker itself


@dataclass(frozen=True)
class PoolConfig:
    max_workers: int
    min_workers: int
    init_payload: bytes | None
    init_timeout: float
    retries: int
    start_method: str | None
    recycle: Recycle = field(default_factory=Recycle)
    max_restarts: int | None = None
    trim: bool = False
    budget: MemoryBudget | None = None
    shm_threshold: int = _oob.DEFAULT_THRESHOLD


class Supervisor:
    """Owns the workers of one pool; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._ctx = get_context(config.start_method)
        self.lock = threading.Lock()
        # Guarded by lock: what user threads hand over, and READY workers with nothing to do
        # lent to submitting threads by slot (see _send_direct_locked).
        self.incoming: deque[Task] = deque()
        self.idle: dict[int, Worker] = {}
        # The newest queued task of each coalesce tag (latest wins).
        self.latest: dict[Hashable, Task] = {}
        self._poked = False
        self.closing = False
        self._cancel_queued = False
        self._terminate: BaseException | None = None
        self.broken: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self.queue = TaskQueue()
        self.workers: dict[int, Worker] = {}
        self.retiring: list[Worker] = []
        self.spares: list[Worker] = []  # processes started ahead, not yet in a slot (Recycle)
        self.failures: deque[float] = deque()
        self.service_time: float | None = None
        self._results: list[tuple[Future[Any], Any]] = []
        self._next_poll = 0.0
        self._retry_start_at: float | None = None
        self.peaks: dict[str, int] = {}  # learned peak memory per function (MemoryBudget.learn)
        self.budget_blocked = False
        self.started = threading.Event()
        self.startup_error: BaseException | None = None
        self.counts: dict[str, int] = Counter(
            submitted=0, done=0, failed=0, cancelled=0, restarts=0, timeouts=0, stolen=0
        )
        self.recycles: Counter[str] = Counter()
        self.slot_restarts: Counter[int] = Counter()
        self.slot_recycles: dict[int, Counter[str]] = {}
        self._thread = threading.Thread(target=self._run, name="memwise-supervisor", daemon=True)

    # ----- called from user threads -------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor; wait until ``min_workers`` are ready or one fails to start."""
        sweep_orphans()  # shared memory left by a pool whose process was killed
        self._thread.start()
        self.started.wait()
        if self.startup_error is not None:
            self._thread.join()
            raise self.startup_error

    def submit(self, task: Task) -> None:
        with self.lock:
            if self.broken is not None:
                raise BrokenPool(
                    f"the pool is broken and accepts no tasks: {self.broken}"
                ) from self.broken
            if self.closing:
                raise ClosedError("cannot schedule new futures after shutdown; create a new pool")
            self.counts["submitted"] += 1
            # Large inline payloads are queued: writing them here would hold the lock, and so
            # every other submitter and the supervisor, for as long as the copy takes.
            direct = self.idle and not self.incoming and len(task.payload) <= DIRECT_BYTES
            if direct and self._send_direct_locked(task):
                return
            self.incoming.append(task)
            self._poke_locked()

    def _send_direct_locked(self, task: Task) -> bool:
        """Hand ``task`` straight to an idle worker from the submitting thread, if one fits.

        This is the one exception to "only the supervisor touches workers", and it is narrow:
        the supervisor lends idle workers by listing them in ``idle`` (only while its queue is
        empty, so nothing is overtaken; anything that queues a task takes them back first)
        and takes them back under the same lock before it uses, stops or forgets them.
        Skipping the hop to the supervisor thread halves the latency of a lone call, which is
        what interactive callers wait for.
        """
        if task.slot is None:
            worker = self.idle.pop(next(iter(self.idle)))
        else:
            candidate = self.idle.get(task.slot)
            if candidate is None or dispatch.key_change(self, candidate, task.key):
                return False
            worker = self.idle.pop(task.slot)
        message = ("run", [task.entry(worker.pid)], dispatch.restock(worker), worker.epoch)
        task.claim()
        worker.busy_since = time.monotonic()
        worker.outstanding.append(task)
        if task.key is not None:
            worker.last_key = task.key
        try:
            worker.channel.send(pickle.dumps(message, _wire.PROTOCOL))
        except OSError:
            pass  # the worker died; the supervisor re-queues or fails the task with the others
        if task.timeout is not None or self.config.recycle.hard_memory is not None:
            self._poke_locked()  # the supervisor must start watching this task
        return True

    def close(self, cancel_futures: bool) -> None:
        with self.lock:
            self.closing = True
            self._cancel_queued = self._cancel_queued or cancel_futures
            self._poke_locked()

    def terminate(self, error: BaseException) -> None:
        """Kill every worker now; whatever is pending or running fails with ``error``."""
        with self.lock:
            self.closing = True
            self._terminate = self._terminate or error
            self._poke_locked()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the supervisor to finish; whether it has."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict[str, Any]:
        """Totals and one row per slot, readable from any thread (possibly a moment stale)."""
        return stats.snapshot(self)

    def _poke_locked(self) -> None:
        # One byte in the pipe is enough to wake the supervisor; skipping the write while one
        # is pending saves a system call per submit during bursts.
        if not self._poked:
            self._poked = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    # ----- the supervisor thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.config.min_workers == 0:
                self.started.set()
            self._ensure_workers()
            timeout = self._enforce_deadlines()
            while not self._finished():
                for key, _events in self._selector.select(timeout):
                    key.data()
                if timeout is not None:
                    self._enforce_deadlines()  # a deadline passed: act before dispatching
                dispatch.dispatch(self)
                self._ensure_workers()
                timeout = self._enforce_deadlines()
                self._resolve()
        except BaseException as exc:
            self.break_pool(BrokenPool(f"the pool's supervisor failed: {exc!r}"), cause=exc)
        finally:
            self._resolve()
            self._cleanup()

    def _finished(self) -> bool:
        if self.broken is not None:
            return not self.everyone()
        if not self.closing or self.queue or self.incoming:
            return False
        everyone = self.everyone()
        if any(w.outstanding for w in everyone):
            return False
        for worker in everyone:
            self.stop(worker)
        return not self.everyone()

    def _on_wake(self) -> None:
        with self.lock:
            self._poked = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            if self.incoming:
                self.idle.clear()
            incoming = list(self.incoming)
            self.incoming.clear()
            cancel, self._cancel_queued = self._cancel_queued, False
            terminate, self._terminate = self._terminate, None
        for task in incoming:
            if task.coalesce is not None:
                self._coalesce(task)
            self.queue.push(task)
        if cancel:
            for task in self.queue.drain():
                self._drop(task)
        if terminate is not None:
            # Here, not in terminate(): break_pool touches workers, this thread's job.
            self.break_pool(terminate, cause=None)

    def _coalesce(self, task: Task) -> None:
        """Latest wins: drop the queued task with the same tag, if it has not started."""
        previous = self.latest.get(task.coalesce)
        if previous is not None:
            self._drop(previous)
        self.latest[task.coalesce] = task

    def _drop(self, task: Task) -> None:
        self.forget_latest(task)
        if task.drop():
            self.counts["cancelled"] += 1

    def forget_latest(self, task: Task) -> None:
        """``task`` leaves the queue for good: it can no longer be the newest of its tag."""
        if task.coalesce is not None and self.latest.get(task.coalesce) is task:
            del self.latest[task.coalesce]

    def _resolve(self) -> None:
        """Set the results collected in this round, last thing before waiting again.

        A woken caller needs the GIL, which this thread holds until it blocks in ``select``;
        resolving last keeps the bookkeeping of the round out of the caller's latency.
        """
        results, self._results = self._results, []
        for future, value in results:
            future.set_result(value)

    # ----- workers -----------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        """Start workers where needed: the minimum, slots with keyed work, spare capacity."""
        if self.broken is not None or (self.closing and not self.queue):
            return
        if len(self.workers) == self.config.max_workers and not self._wants_spare():
            return  # every slot is filled: the common case, on every turn of the loop
        wanted = set(range(self.config.min_workers)) | self.queue.waiting_slots()
        spare = sum(
            1
            for w in self.workers.values()
            if w.state is State.STARTING or (w.state is State.READY and not w.outstanding)
        )
        need = self.queue.general_count() - spare
        for slot in range(self.config.max_workers):
            if need <= 0:
                break
            if slot not in self.workers and slot not in wanted:
                wanted.add(slot)
                need -= 1
        for slot in sorted(wanted - self.workers.keys()):
            if self._promote_spare(slot):
                continue
            if not self._try_start(slot):
                return
        while self._wants_spare() and self._try_start(SPARE):
            pass

    def _try_start(self, slot: int) -> bool:
        try:
            self._start_worker(slot)
        except OSError as exc:
            error = WorkerInitError(f"could not start a worker process: {exc}")
            error.__cause__ = exc
            if not self.started.is_set():
                self.startup_error = error
                self.break_pool(error, cause=exc)
            else:
                deaths.note_failure(self, error)
                self._retry_start_at = time.monotonic() + START_RETRY_SECONDS
            return False
        return True

    def _wants_spare(self) -> bool:
        """Warm spares hide a recycled worker's start-up, while there is work to hide it from."""
        return (
            len(self.spares) < self.config.recycle.warm_spares
            and self.started.is_set()
            and not self.closing
            and (bool(self.queue) or any(w.outstanding for w in self.workers.values()))
        )

    def _promote_spare(self, slot: int) -> bool:
        for spare in self.spares:
            if spare.state is State.READY and spare.kill_reason is None:
                self.spares.remove(spare)
                spare.slot = slot
                self.workers[slot] = spare
                return True
        return False

    def everyone(self) -> list[Worker]:
        """Every worker process alive: in slots, retiring, and spares."""
        return [*self.workers.values(), *self.retiring, *self.spares]

    def _start_worker(self, slot: int) -> None:
        conn, child_conn = self._ctx.Pipe(duplex=True)
        alive_r, alive_w = self._ctx.Pipe(duplex=False)
        ledger = Ledger(self._ctx)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=_worker_module.main,
            args=(child_conn, alive_r, ledger),
            name=f"memwise-worker-{slot}",
        )
        try:
            process.start()
        finally:
            child_conn.close()
            alive_r.close()
            forget_main_hint()
        worker = Worker(slot, process, conn, alive_w, ledger)
        if slot == SPARE:
            self.spares.append(worker)
        else:
            self.workers[slot] = worker
        if self.config.budget is not None:
            self.config.budget.track(worker.pid)
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._on_readable(worker))
        self._selector.register(
            process.sentinel, selectors.EVENT_READ, lambda: deaths.on_exit(self, worker)
        )
        options = {
            "report_memory": self.config.recycle.needs_memory_reports,
            "trim": self.config.trim,
            "owner": current_owner(),
            "shm_threshold": self.config.shm_threshold,
            "recycle": self.config.recycle,
            "measure_peak": self.config.budget is not None and self.config.budget.learn,
        }
        try:
            worker.channel.send(
                pickle.dumps(("init", self.config.init_payload, options), _wire.PROTOCOL)
            )
        except OSError:
            pass  # it died already; its sentinel will say how

    def retire(self, worker: Worker, reason: str) -> None:
        """Replace ``worker``: it takes no new task, finishes what it holds, then stops."""
        self.recycles[reason] += 1
        self.slot_recycles.setdefault(worker.slot, Counter())[reason] += 1
        worker.retiring = True
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        self.retiring.append(worker)
        if not worker.outstanding:
            self.stop(worker)

    def stop(self, worker: Worker) -> None:
        if worker.state is State.STOPPING or worker.outstanding:
            return
        worker.state = State.STOPPING
        worker.since = time.monotonic()
        try:
            worker.channel.send(pickle.dumps(("stop",), _wire.PROTOCOL))
        except OSError:
            pass

    def kill(self, worker: Worker, reason: str) -> None:
        worker.kill_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass

    def forget(self, worker: Worker) -> None:
        for fileobj in (worker.conn, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.conn.close()
        worker.alive.close()
        worker.process.close()
        if self.config.budget is not None:
            self.config.budget.untrack(worker.pid)
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        elif worker in self.retiring:
            self.retiring.remove(worker)
        elif worker in self.spares:
            self.spares.remove(worker)

    def reclaim_lent_workers(self) -> None:
        with self.lock:
            self.idle.clear()

    def _enforce_deadlines(self) -> float | None:
        """Act on overdue workers; return the seconds until the next deadline (or None)."""
        now = time.monotonic()
        nearest: float | None = None
        for worker in self.everyone():
            deadline = worker.deadline(self.config.init_timeout, self._idle_limit(worker))
            if deadline is not None and deadline <= now:
                self._on_deadline(worker)
            elif deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        for worker in list(self.workers.values()):
            if len(worker.outstanding) > 1 and worker.kill_reason is None:
                steal_at = worker.busy_since + dispatch.STEAL_SECONDS
                if steal_at <= now:
                    dispatch.steal(self, worker)
                    nearest = now  # dispatch the stolen tasks without waiting for an event
                elif nearest is None or steal_at < nearest:
                    nearest = steal_at
        if self.config.recycle.hard_memory is not None and any(
            w.outstanding for w in self.workers.values()
        ):
            if now >= self._next_poll:
                self._check_hard_memory()
                self._next_poll = now + self.config.recycle.poll
            nearest = self._next_poll if nearest is None else min(nearest, self._next_poll)
        if self._retry_start_at is not None:
            if self._retry_start_at <= now:
                self._retry_start_at = None  # the loop calls _ensure_workers next
            else:
                nearest = min(nearest or self._retry_start_at, self._retry_start_at)
        if self.budget_blocked and self.config.budget is not None:
            recheck = now + self.config.budget.poll
            nearest = recheck if nearest is None else min(nearest, recheck)
        return None if nearest is None else max(0.0, nearest - now)

    def _idle_limit(self, worker: Worker) -> float | None:
        idle = self.config.recycle.idle
        if worker in self.spares:
            return idle
        # A fresh worker inside the minimum would only be replaced by another fresh one.
        if idle is None or (worker.tasks_done == 0 and worker.slot < self.config.min_workers):
            return None
        return idle

    def _on_deadline(self, worker: Worker) -> None:
        # A submitting thread may have handed this (idle) worker a task since the deadline was
        # computed: take the loans back and look again.
        self.reclaim_lent_workers()
        deadline = worker.deadline(self.config.init_timeout, self._idle_limit(worker))
        if deadline is None or deadline > time.monotonic():
            return
        if worker.state is State.STARTING:
            worker.init_error = WorkerInitError(
                f"the worker initializer did not finish within init_timeout="
                f"{self.config.init_timeout} s (pid {worker.pid}); it was killed"
            )
            self.kill(worker, "init timeout")
        elif worker.state is State.STOPPING:
            self.kill(worker, "stop timeout")
        elif worker.outstanding:
            worker.timed_out = worker.outstanding[0]
            self.kill(worker, "timeout")
        elif worker in self.spares:
            self.stop(worker)
        else:
            self.retire(worker, "idle")

    def _check_hard_memory(self) -> None:
        limit = self.config.recycle.hard_memory_bytes
        assert limit is not None
        for worker in list(self.workers.values()):
            if not worker.outstanding or worker.kill_reason is not None:
                continue
            try:
                worker.private = private_memory(worker.pid)
            except (ProcessLookupError, PermissionError):
                continue
            if worker.private > limit:
                self.recycles["hard_memory"] += 1
                self.slot_recycles.setdefault(worker.slot, Counter())["hard_memory"] += 1
                self.kill(worker, "memory")

    # ----- messages ----------------------------------------------------------------------

    def _on_readable(self, worker: Worker) -> None:
        if worker.conn.closed:
            return  # its exit was handled earlier in the same round of events
        try:
            messages = worker.channel.receive()
        except (EOFError, OSError):
            # The process is exiting; its sentinel will tell how, so wait for that.
            try:
                self._selector.unregister(worker.conn)
            except (KeyError, ValueError, OSError):
                pass
            return
        for data in messages:
            self.on_message(worker, pickle.loads(data))

    def on_message(self, worker: Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            self._on_done(worker, *message[1:])
        elif kind == "ready":
            worker.state = State.READY
            worker.since = worker.idle_since = time.monotonic()
            self._check_started()
        elif kind == "init_error":
            cause = _wire.load_exception(message[1])
            error = WorkerInitError(
                f"the worker initializer raised {type(cause).__name__}: {cause} (pid "
                f"{worker.pid}); see the remote traceback above"
            )
            error.__cause__ = cause
            worker.init_error = error

    def _check_started(self) -> None:
        ready = sum(1 for w in self.workers.values() if w.state is State.READY)
        if ready >= self.config.min_workers:
            self.started.set()

    def _on_done(self, worker: Worker, task_id: int, *result: Any) -> None:
        task = worker.outstanding.popleft()
        assert task.id == task_id, "worker results arrived out of order"
        try:
            self._finish(worker, task, *result)
        except BaseException as exc:
            # The task has left every list break_pool looks at: fail it here, or it is lost.
            if not task.future.done():
                task.future.set_exception(exc)
            raise

    def _finish(
        self,
        worker: Worker,
        task: Task,  # the rest: the worker's "done" message (see memwise.pool.worker)
        status: int,
        payload: bytes,
        seconds: float,
        gifts: tuple[Any, ...],
        returns: list[Any],
        private: int | None,
        peak: int | None,
    ) -> None:
        task.release_memory()
        _oob.returned(returns, worker.pid)
        if peak is not None:
            self._learn_peak(task, peak)
        for gift in gifts:
            produced = worker.result_sizes
            produced[gift.nbytes] = min(produced.get(gift.nbytes, 0) + 1, dispatch.RESTOCK_DEPTH)
        now = time.monotonic()
        worker.busy_since = now
        worker.tasks_done += 1
        worker.private = private
        if not worker.outstanding:
            worker.idle_since = now
        self.service_time = (
            seconds if self.service_time is None else 0.8 * self.service_time + 0.2 * seconds
        )
        self.failures.clear()
        self._complete(task, status, payload, gifts)
        if not worker.retiring:
            reason = self.config.recycle.after_task(worker.tasks_done, private)
            if reason is not None:
                self.reclaim_lent_workers()
                dispatch.take_back(self, worker)  # the worker starts nothing more; see worker
                self.retire(worker, reason)
        elif not worker.outstanding:
            self.stop(worker)

    def _learn_peak(self, task: Task, peak: int) -> None:
        # The largest recent peak, decaying so that one outlier does not block forever.
        label = task.label
        self.peaks[label] = max(peak, int(self.peaks.get(label, 0) * PEAK_DECAY))

    def _complete(self, task: Task, status: int, payload: bytes, gifts: tuple[Any, ...]) -> None:
        try:
            if status == _worker_module.OK:
                buffers = _oob.adopted(gifts)
                value = _wire.loads(payload, lambda: f"the result of {task}", buffers)
            else:
                error = _wire.load_exception(payload)
        except (SerializationError, OSError, ValueError) as exc:
            # Unpicklable, or its result slots could not be mapped: this task fails alone.
            status, error = _worker_module.RAISED, exc
        if status == _worker_module.OK:
            self.counts["done"] += 1
            self._results.append((task.future, value))
        else:
            self.counts["failed"] += 1
            task.future.set_exception(error)

    def break_pool(self, error: BaseException, cause: BaseException | None) -> None:
        """Fail everything pending with ``error`` and kill every worker."""
        if cause is not None and error is not cause:
            error.__cause__ = cause
        with self.lock:
            if self.broken is not None:
                return
            self.broken = error
            self.idle.clear()
            pending = list(self.incoming) + self.queue.drain()
            self.incoming.clear()
        for worker in self.everyone():
            pending.extend(worker.outstanding)
            worker.outstanding.clear()
            self.kill(worker, "broken")
        for task in pending:
            task.release_memory()
            if not task.future.done():
                task.future.set_exception(error)
        self.started.set()

    # ----- the end -----------------------------------------------------------------------

    def _cleanup(self) -> None:
        for worker in self.everyone():
            self.kill(worker, "cleanup")
            worker.process.join(5.0)
            self.forget(worker)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.started.set()
