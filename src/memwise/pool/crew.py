"""The worker processes of one pool: who is in which lane, and starting, stopping, replacing.

Supervisor thread only. A worker is in exactly one of three places until it is forgotten: its
lane (``_workers``), retiring (recycled: it finishes what it holds, then stops), or spare
(started ahead by ``Recycle(spares=)``, so that a recycled worker's replacement is already
warm). The crew also owns what the supervisor waits on (every worker's connection and process
sentinel, plus the wake-up pipe); :mod:`memwise.pool.deadlines` acts on its workers' deadlines.
"""

from __future__ import annotations

import logging
import selectors
import threading
from collections.abc import Callable, Collection
from typing import Any

from memwise.errors import SerializationError, WorkerInitError
from memwise.pool._protocol import Init, InitOptions, Stop, encode
from memwise.pool.config import PoolConfig
from memwise.pool.handle import State, Worker
from memwise.pool.inbox import Inbox
from memwise.pool.lanes import Lanes
from memwise.pool.launcher import Launched, Launcher, launch
from memwise.pool.queue import TaskQueue
from memwise.pool.stats import Tally
from memwise.pool.subscribers import EventHub
from memwise.shared import current_owner

logger = logging.getLogger(__name__)

SPARE = -1  # the lane number of spare workers
START_RETRY_SECONDS = 0.2  # after the OS refused a new process

WorkerCallback = Callable[[Worker], None]
StartFailure = Callable[[BaseException, "BaseException | None", bool], None]


class Crew:
    """The processes of a pool; see the module docstring.

    ``on_readable(worker)`` and ``on_exit(worker)`` are called (from :meth:`wait`'s callers)
    when a worker's connection has data and when its process has exited;
    ``start_failed(error, cause, fatal)`` when a process could not be started.
    """

    def __init__(
        self,
        config: PoolConfig,
        ctx: Any,
        *,
        lanes: Lanes,
        queue: TaskQueue,
        inbox: Inbox,
        tally: Tally,
        hub: EventHub,
        started: threading.Event,
        on_readable: WorkerCallback,
        on_exit: WorkerCallback,
        start_failed: StartFailure,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._clock = config.clock
        self._lanes = lanes
        self._queue = queue
        self._inbox = inbox
        self._tally = tally
        self._hub = hub
        self._started = started
        self._on_readable = on_readable
        self._on_exit = on_exit
        self._start_failed = start_failed
        # The process in each lane; a lane at or above ``lanes.count`` is draining.
        self._workers: dict[int, Worker] = {}
        self._retiring: list[Worker] = []  # left their lane; finish their tasks, then stop
        self._spares: list[Worker] = []  # processes started ahead, not yet in a lane
        # Why a lane's previous process went, until its replacement starts (worker_replaced).
        self._vacated: dict[int, str] = {}
        self._selector = selectors.DefaultSelector()
        self._retry_start_at: float | None = None
        self._launcher = Launcher(ctx, config.start_initargs)
        self.watch(self._launcher, self._on_launched)

    # ----- who is where ------------------------------------------------------------------

    def in_lanes(self) -> Collection[Worker]:
        """The workers in lanes (draining lanes included)."""
        return self._workers.values()

    def in_lane(self, lane: int) -> Worker | None:
        return self._workers.get(lane)

    def lanes_in_use(self) -> list[int]:
        """The lanes that have a worker, in order."""
        return sorted(self._workers)

    def out_of_lanes(self) -> list[Worker]:
        """Workers in no lane: retiring, then spares."""
        return [*self._retiring, *self._spares]

    def everyone(self) -> list[Worker]:
        """Every worker process alive: in lanes, retiring, and spares."""
        return [*self._workers.values(), *self._retiring, *self._spares]

    def is_spare(self, worker: Worker) -> bool:
        return worker in self._spares

    def pending_spares(self) -> int:
        """Spares asked of the launcher and not made workers yet."""
        return len(self._launcher.pending())

    def vacated(self, lane: int, reason: str) -> None:
        """The process of ``lane`` went for ``reason``; its replacement will say so."""
        self._vacated[lane] = reason

    def vacancies(self) -> dict[int, str]:
        """Lanes whose process went and is not yet replaced, with why."""
        return dict(self._vacated)

    def place(self, worker: Worker) -> None:
        """Put ``worker`` in its lane (a new process, or a spare promoted)."""
        self._workers[worker.lane] = worker
        reason = self._vacated.pop(worker.lane, None)
        if reason is not None:
            self._hub.announce("worker_replaced", lane=worker.lane, pid=worker.pid, reason=reason)

    # ----- what the supervisor waits on --------------------------------------------------

    def watch(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self._selector.register(fileobj, selectors.EVENT_READ, callback)

    def unwatch(self, fileobj: Any) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError, OSError):
            pass

    def wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait for something to happen; what did (each key's ``data`` is its callback)."""
        return self._selector.select(timeout)

    # ----- starting ----------------------------------------------------------------------

    def staff(self) -> bool:
        """Fill lanes where needed (the minimum, lanes with keyed work, spare capacity), with a
        warm spare if there is one; True if a spare took a lane (the caller dispatches again:
        nothing else may wake the loop if every lane was recycled at once)."""
        if self._inbox.broken is not None or (self._inbox.closing and not self._queue):
            return False
        workers = self._workers
        lanes = self._lanes.count
        if len(workers) == lanes and max(workers) < lanes:
            return False  # every lane is filled: the common case, on every turn of the loop
        # Lanes with keyed work include draining ones (see memwise.pool.lanes).
        wanted = set(range(self._lanes.minimum)) | self._queue.waiting_lanes()
        spare = sum(
            1
            for w in workers.values()
            if w.state is State.STARTING or (w.state is State.READY and not w.busy)
        )
        need = self._queue.general_count() - spare
        for lane in range(lanes):
            if need <= 0:
                break
            if lane not in workers and lane not in wanted:
                wanted.add(lane)
                need -= 1
        promoted = False
        for lane in sorted(wanted - workers.keys()):
            if self._promote_spare(lane):
                promoted = True
            elif not self._try_start(lane):
                break
        return promoted

    def start_spares(self) -> None:
        """Ask the launcher for the spares wanted; they start on its thread (see
        :mod:`memwise.pool.launcher`), so the supervisor keeps dispatching meanwhile."""
        if self._inbox.broken is not None or self._retry_start_at is not None:
            return  # broken, or starts are failing: no more processes than the lanes need
        while self._wants_spare():
            self._launcher.request(SPARE)

    def _wants_spare(self) -> bool:
        """Warm spares hide a recycled worker's start-up, while there is work to hide it from."""
        return (
            len(self._spares) + self.pending_spares() < self._config.recycle.warm_spares
            and self._started.is_set()
            and not self._inbox.closing
            and (bool(self._queue) or any(w.busy for w in self._workers.values()))
        )

    def _promote_spare(self, lane: int) -> bool:
        """Give ``lane`` a spare: a ready one, else one still starting. A spare still starting is
        further along than a process started now, and starting one here would hold up the
        supervisor's thread for a fork (tens of ms under load) while the other lanes wait
        for work: workers leaking alike reach their limit together, faster than one spare
        gets ready (measured with ``memwise bench recycle``)."""
        candidates = [
            s
            for s in self._spares
            if s.kill_reason is None and s.state in (State.READY, State.STARTING)
        ]
        if not candidates:
            return False
        spare = min(candidates, key=lambda s: s.state is not State.READY)  # ready ones first
        self._spares.remove(spare)
        spare.lane = lane
        self.place(spare)
        return True

    def _try_start(self, lane: int) -> bool:
        """Start a process for an empty lane on this thread: the lane is needed now, and a
        snapshot shows it filled from this turn on. False if it could not be started."""
        try:
            launched = launch(self._ctx, lane, self._config.start_initargs)
        except (SerializationError, OSError) as exc:
            self._failed_start(exc)
            return False
        self._adopt(launched)
        return True

    def _on_launched(self) -> None:
        """The launcher started spares (or failed to): make workers of them."""
        for outcome in self._launcher.collect():
            if isinstance(outcome, Launched):
                self._adopt(outcome)
            elif isinstance(outcome.error, (SerializationError, OSError)):
                self._failed_start(outcome.error)
            else:
                raise outcome.error

    def _failed_start(self, exc: SerializationError | OSError) -> None:
        if self._inbox.broken is not None:
            return  # the pool has its error already
        if isinstance(exc, SerializationError):  # would fail for every worker: the pool cannot work
            self._start_failed(exc, exc.__cause__, True)
            return
        error = WorkerInitError(f"could not start a worker process: {exc}")
        error.__cause__ = exc
        started = self._started.is_set()
        self._start_failed(error, exc, False)
        if started:
            self._retry_start_at = self._clock() + START_RETRY_SECONDS

    def _adopt(self, launched: Launched) -> None:
        """Make a worker of a started process: record it, watch it, send it its Init."""
        config = self._config
        lane, process, conn = launched.lane, launched.process, launched.conn
        worker = Worker(
            lane, process, conn, launched.alive, launched.ledger, self._clock(), launched.reply
        )
        self._hub.announce("worker_started", lane=lane, pid=worker.pid)
        if lane == SPARE:
            self._spares.append(worker)
        else:
            self.place(worker)
        if config.budget is not None:
            config.budget.track(worker.pid)
        self.watch(conn, lambda: self._on_readable(worker))
        self.watch(process.sentinel, lambda: self._on_exit(worker))
        options = InitOptions(
            owner=current_owner(),
            shm_threshold=config.shm_threshold,
            recycle=config.recycle,
            report_memory=config.recycle.needs_memory_reports,
            trim=config.trim,
            measure_peak=config.budget is not None and config.budget.learn,
            imports=self._running_modules() if lane == SPARE else (),
        )
        try:
            worker.channel.send(encode(Init(config.init_payload, options)))
        except OSError:
            pass  # it died already; its sentinel will say how
        if self._inbox.broken is not None:
            self.kill(worker, "broken")  # a spare started before the pool broke

    def _running_modules(self) -> tuple[str, ...]:
        """Modules of the functions the workers run now (the main script is preloaded)."""
        names = {
            getattr(t.fn, "__module__", None) for w in self._workers.values() for t in w.outstanding
        }
        return tuple(sorted(n for n in names if n and n not in ("__main__", "__mp_main__")))

    def on_ready(self, worker: Worker) -> None:
        """``worker`` finished its initializer; the pool has started once enough have."""
        if worker.state is not State.STARTING:
            return  # told to stop while it started (shutdown): it exits, and that is expected
        worker.state = State.READY
        worker.since = worker.idle_since = self._clock()
        self._hub.announce("worker_ready", lane=worker.lane, pid=worker.pid)
        ready = sum(1 for w in self._workers.values() if w.state is State.READY)
        if ready >= self._lanes.minimum:
            self._started.set()

    # ----- stopping ----------------------------------------------------------------------

    def retire(self, worker: Worker, reason: str) -> None:
        """Replace ``worker``: it takes no new task, finishes what it holds, then stops.

        The caller has taken back the loans (see :mod:`memwise.pool.inbox`).
        """
        self._tally.recycled(worker.lane, reason)
        logger.info(
            "recycling worker pid %d in lane %d (%s); it finishes its tasks first",
            worker.pid,
            worker.lane,
            reason,
        )
        self._hub.announce("worker_recycled", lane=worker.lane, pid=worker.pid, reason=reason)
        self._vacated[worker.lane] = reason
        worker.retiring = True
        if self._workers.get(worker.lane) is worker:
            del self._workers[worker.lane]
        self._retiring.append(worker)
        if not worker.busy:
            self.stop(worker)

    def retire_drained_lanes(self) -> None:
        """Retire the workers of lanes above the count once no key is pinned to them."""
        lanes = self._lanes.count
        if not self._workers or max(self._workers) < lanes:
            return
        waiting = self._queue.waiting_lanes()
        for lane, worker in list(self._workers.items()):
            if lane < lanes or worker.busy or lane in waiting:
                continue
            if not self._lanes.pinned(lane):
                self._inbox.reclaim()  # a caller may have lent it again (see the inbox)
                self.retire(worker, "resize")

    def stop(self, worker: Worker) -> None:
        """Ask an idle worker to exit (it is killed if it takes longer than the grace period)."""
        if worker.state is State.STOPPING or worker.busy:
            return
        worker.state = State.STOPPING
        worker.since = self._clock()
        try:
            worker.channel.send(encode(Stop()))
        except OSError:
            pass

    def stop_idle(self) -> bool:
        """Stop every worker if none holds a task; whether none is left."""
        everyone = self.everyone()
        if any(w.busy for w in everyone):
            return False
        for worker in everyone:
            self.stop(worker)
        return not self.everyone()

    def kill(self, worker: Worker, reason: str) -> None:
        worker.kill_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass

    def forget(self, worker: Worker) -> None:
        """``worker``'s process has exited: drop every trace of it."""
        for fileobj in (worker.conn, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.conn.close()
        worker.alive.close()
        self.unwatch(worker.reply)
        worker.reply.close()
        worker.process.close()
        if self._config.budget is not None:
            self._config.budget.untrack(worker.pid)
        if self._workers.get(worker.lane) is worker:
            del self._workers[worker.lane]
        elif worker in self._retiring:
            self._retiring.remove(worker)
        elif worker in self._spares:
            self._spares.remove(worker)

    def close(self) -> None:
        """Kill every worker and wait for it; stop watching anything."""
        self.unwatch(self._launcher)
        for launched in self._launcher.close():  # spares started while the pool was ending
            self._adopt(launched)
        for worker in self.everyone():
            self.kill(worker, "cleanup")
            worker.process.join(5.0)
            self.forget(worker)
        self._selector.close()

    def start_retry(self, now: float) -> float | None:
        """When to try again to start a process the OS refused (None: no retry pending)."""
        if self._retry_start_at is not None and self._retry_start_at <= now:
            self._retry_start_at = None  # the loop calls staff next
        return self._retry_start_at
