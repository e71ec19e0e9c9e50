"""Starting spare worker processes off the supervisor's thread.

``Process.start()`` through the forkserver returns only once the server has forked and sent
back the new pid: a few milliseconds on an idle machine, tens on a busy one (measured under
load: 44 ms per start, 24 of them waiting for the pid). A supervisor starting a spare itself
(which it does right after a recycle, while the other workers are busy) could neither hand out
tasks nor collect results meanwhile, so every worker idled after its task. The launcher's
thread does that part: the supervisor asks for a process (:meth:`Launcher.request`), carries
on, and picks the started processes up (:meth:`Launcher.collect`) when the launcher's pipe
(:meth:`Launcher.fileno`) becomes readable. Everything else about a new worker (its record,
what the supervisor watches, the Init message) stays on the supervisor's thread. A process for
an empty lane is started with :func:`launch` on the supervisor's thread: the lane is needed
now, and a snapshot must show it filled.
"""

from __future__ import annotations

import multiprocessing.process
import os
import pickle
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from memwise import _channel
from memwise.errors import SerializationError
from memwise.pool import worker as _worker_module
from memwise.pool.context import forget_main_hint
from memwise.pool.ledger import Ledger

# What multiprocessing raises when it cannot pickle a new process's arguments.
_START_PICKLING_FAILURES = (pickle.PicklingError, TypeError, AttributeError, RuntimeError)


@dataclass(frozen=True)
class Launched:
    """A started process for ``lane`` and the parent's ends of what it was given."""

    lane: int
    process: Any
    conn: Any  # the duplex pipe to the worker
    alive: Any  # the write end of the pipe whose closing tells the worker its parent is gone
    ledger: Ledger
    reply: Any  # the read end of the worker's reply pipe (see memwise.pool._protocol)


@dataclass(frozen=True)
class LaunchFailed:
    """A process for ``lane`` could not be started: ``error`` says why."""

    lane: int
    error: BaseException


def launch(ctx: Any, lane: int, start_initargs: tuple[Any, ...] | None) -> Launched:
    """Start one worker process (blocking); raises SerializationError or OSError."""
    conn, child_conn = _channel.pipe(ctx)
    alive_r, alive_w = ctx.Pipe(duplex=False)
    reply_r, reply_w = ctx.Pipe(duplex=False)
    ledger = Ledger(ctx)
    process = ctx.Process(
        target=_worker_module.main,
        args=(child_conn, alive_r, reply_w, ledger, start_initargs),
        name=f"memwise-worker-{lane}",
    )
    try:
        process.start()
    except BaseException as exc:
        conn.close()
        alive_w.close()
        reply_r.close()
        if isinstance(exc, _START_PICKLING_FAILURES):
            raise SerializationError(
                f"could not hand the initializer's arguments to a new worker: {exc!r}; pass "
                "picklable values, and multiprocessing queues, locks or events made by the "
                "pool's start method (multiprocessing.get_context(...).Queue())"
            ) from exc
        raise
    finally:
        child_conn.close()
        alive_r.close()
        reply_w.close()
        forget_main_hint()
    # Every Process.start() polls the processes multiprocessing lists as children, on the
    # starting thread. The supervisor's thread alone may poll, join and close a worker (two
    # threads reading one exit status race for it), so a worker leaves that list at once.
    # (The pool shuts its workers down itself, before multiprocessing's exit handler runs.)
    getattr(multiprocessing.process, "_children", set()).discard(process)
    return Launched(lane, process, conn, alive_w, ledger, reply_r)


class Launcher:
    """Starts processes on a thread of its own, in the order asked; see the module docstring.

    ``request``, ``pending``, ``collect`` and ``close`` are for the supervisor's thread only.
    """

    def __init__(self, ctx: Any, start_initargs: tuple[Any, ...] | None) -> None:
        self._ctx = ctx
        self._start_initargs = start_initargs
        self._cond = threading.Condition()
        self._requests: deque[int] = deque()  # under _cond
        self._outcomes: list[Launched | LaunchFailed] = []  # under _cond
        self._closed = False  # under _cond
        self._pending: list[int] = []  # requested, not collected yet (supervisor thread)
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def fileno(self) -> int:
        """Readable when started processes (or failures) wait to be collected."""
        return self._wake_r

    def request(self, lane: int) -> None:
        """Start a process for ``lane`` (``SPARE`` for a spare) as soon as the thread can."""
        self._pending.append(lane)
        with self._cond:
            self._requests.append(lane)
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memwise-launcher", daemon=True)
            self._thread.start()

    def pending(self) -> list[int]:
        """The lanes of processes requested and not collected yet, in order."""
        return self._pending

    def collect(self) -> list[Launched | LaunchFailed]:
        """What the thread has started (or failed to) since the last call, in order."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            outcomes, self._outcomes = self._outcomes, []
        for outcome in outcomes:
            self._pending.remove(outcome.lane)
        return outcomes

    def close(self) -> list[Launched]:
        """Drop the requests not started, wait for the thread; the processes not collected.

        The caller owns those processes (it kills them, as it does its workers).
        """
        with self._cond:
            self._closed = True
            for lane in self._requests:
                self._pending.remove(lane)
            self._requests.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        left = [o for o in self.collect() if isinstance(o, Launched)]
        os.close(self._wake_r)
        os.close(self._wake_w)
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._requests and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                lane = self._requests.popleft()
            outcome: Launched | LaunchFailed
            try:
                outcome = launch(self._ctx, lane, self._start_initargs)
            except BaseException as exc:  # the supervisor decides what a failure means
                outcome = LaunchFailed(lane, exc)
            with self._cond:
                self._outcomes.append(outcome)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
