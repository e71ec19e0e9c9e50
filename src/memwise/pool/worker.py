"""The loop a worker process runs: receive, run, send, until told to stop or orphaned.

This module is preloaded in the forkserver, so it imports only the standard library and
memwise's light modules: a fork from the server then starts a worker in a few milliseconds.

The messages it exchanges with the supervisor are in :mod:`memwise.pool._protocol`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

from memwise import _channel, _oob, _wire
from memwise.errors import SerializationError
from memwise.memory import PeakProbe
from memwise.pool import context
from memwise.pool._protocol import (
    OK,
    RAISED,
    Init,
    InitError,
    InitOptions,
    Ready,
    Run,
    Stop,
    TaskEntry,
    decode,
    encode,
    encode_done,
)
from memwise.pool.ledger import Ledger
from memwise.shared import Owner, owner_of, sweep_when_dead

EXIT_PARENT_GONE = 70
EXIT_INIT_FAILED = 71


class PartialChunk:
    """What a chunk of ``map`` returns: the results up to the first error, and that error.

    ``map`` must raise an item's error at that item's position, after yielding the results
    before it, so a failing item cannot simply fail the whole chunk.
    """

    __slots__ = ("error", "results")

    def __init__(self, results: list[Any], error: bytes | None) -> None:
        self.results = results
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartialChunk, (self.results, self.error))


def run_chunk(fn: Any, items: list[Any], star: bool) -> PartialChunk:
    """Apply ``fn`` to each item of a ``map`` chunk (``fn(*item)`` when ``star``)."""
    results: list[Any] = []
    append = results.append
    try:
        if star:
            for item in items:
                append(fn(*item))
        else:
            for item in items:
                append(fn(item))
    except BaseException as exc:
        return PartialChunk(results, _wire.dump_exception(exc))
    return PartialChunk(results, None)


def _watch_parent(alive: Any, owner: Owner) -> None:
    """Exit when the parent is gone, even in the middle of a task.

    The parent holds the only write end of the ``alive`` pipe and never writes to it, so
    ``recv`` ends (EOF) exactly when the parent has died, however it died. Its shared memory
    goes too: nobody else would unlink it before the next pool starts.
    """
    try:
        while True:
            alive.recv_bytes()
    except (EOFError, OSError):
        pass
    try:
        sweep_when_dead(owner)
    finally:
        os._exit(EXIT_PARENT_GONE)


def _die_with_parent(alive: Any) -> None:
    parent = multiprocessing.parent_process()  # the pool's process, not the forkserver
    owner = owner_of(os.getppid() if parent is None or parent.pid is None else parent.pid)
    threading.Thread(target=_watch_parent, args=(alive, owner), daemon=True).start()
    if sys.platform.startswith("linux"):
        # Backstop for tasks that hold the GIL forever: the kernel kills us when our parent
        # (the forkserver, which itself exits with the pool's process) goes away.
        import ctypes

        pr_set_pdeathsig = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _send(channel: _channel.Channel, message: Any) -> None:
    channel.send(encode(message))


def _initialize(conn: _channel.Channel, init: Init, start_initargs: tuple[Any, ...] | None) -> bool:
    if context.main_failure is not None:  # the forkserver could not import the main script
        _send(conn, InitError(context.main_failure, "importing the main script"))
        return False
    try:
        if init.initializer is not None:
            initializer, initargs = _wire.loads(init.initializer, "the initializer")
            initializer(*(initargs if start_initargs is None else start_initargs))
    except BaseException as exc:
        _send(conn, InitError(_wire.dump_exception(exc), "running the initializer"))
        return False
    for name in init.options.imports:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # a task of it will fail to unpickle, with the error, where it belongs
    _send(conn, Ready(os.getpid()))
    return True


def execute(
    task_id: int, payload: bytes, handles: tuple[Any, ...], slots: _oob.WorkerSlots
) -> tuple[int, int, bytes, float, tuple[Any, ...]]:
    """Run one task; returns (id, status, pickled result or exception, seconds, result slots).

    Its arguments, and the views of shared memory under them, are freed when this returns,
    so the caller can hand the borrowed slots back right after.
    """
    start = time.perf_counter()
    try:
        fn, args, kwargs = _wire.loads(
            payload, lambda: f"task {task_id}", buffers=_oob.borrowed(handles)
        )
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return task_id, RAISED, _wire.dump_exception(exc), time.perf_counter() - start, ()
    seconds = time.perf_counter() - start
    encoder = slots.encoder()
    try:
        data = _wire.dumps(
            result,
            lambda: f"the result of {_wire.describe(fn)}() (task {task_id})",
            buffer_callback=encoder,
        )
    except SerializationError as exc:
        encoder.reset()
        return task_id, RAISED, _wire.dump_exception(exc), seconds, ()
    return task_id, OK, data, seconds, tuple(encoder.gifts)


def _after_task(options: InitOptions) -> int | None:
    """Housekeeping between tasks; returns private memory when the supervisor wants it."""
    if options.trim:
        from memwise.memory import trim

        trim()
    if options.report_memory:
        from memwise.memory import private_memory

        return private_memory()
    return None


def main(
    conn: Any,
    alive: Any,
    reply: Any,
    ledger: Ledger,
    start_initargs: tuple[Any, ...] | None = None,
) -> None:
    """Entry point of a worker process (``start_initargs``: see ``PoolConfig``)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(alive)
    channel = _channel.channel(conn)
    replies = _channel.channel(reply)  # Dones of Runs marked ``reply``
    inbox: deque[bytearray] = deque(channel.receive())
    while not inbox:
        inbox.extend(channel.receive())
    init = decode(inbox.popleft())
    if not isinstance(init, Init) or not _initialize(channel, init, start_initargs):
        sys.exit(EXIT_INIT_FAILED)
    options = init.options
    slots = _oob.WorkerSlots(options.owner, options.shm_threshold)
    slots.serve_tasks()
    recycle = options.recycle
    housekeeping = options.trim or options.report_memory
    probe = PeakProbe() if options.measure_peak else None
    borrowing = False
    tasks_done = 0
    newest_epoch = -1
    backlog: deque[tuple[int, TaskEntry, _channel.Channel]] = deque()
    while True:
        if backlog:
            epoch, (task_id, payload, handles), answer_to = backlog.popleft()
            if not ledger.begin(task_id, epoch):
                continue  # taken back by the supervisor, or we are retiring
            borrowing = borrowing or bool(handles)
            if probe is not None:
                probe.start()
            outcome = execute(task_id, payload, handles, slots)
            peak = None if probe is None else probe.rise()
            returns = _oob.returns() if borrowing else []
            tasks_done += 1
            private = _after_task(options) if housekeeping else None
            if recycle.after_task(tasks_done, private) is not None:
                # Due for recycling: start nothing more, so the tasks sent behind this one can
                # go to another worker, and this one's memory never exceeds its limit by more
                # than one task's worth. The supervisor reaches the same verdict from "done".
                ledger.revoke(newest_epoch)
            answer_to.send(encode_done(*outcome, returns, private, peak))
            continue
        if not inbox:
            try:
                inbox.extend(channel.receive())
            except (EOFError, OSError):
                return
            continue
        message: Run | Stop = decode(inbox.popleft())
        if isinstance(message, Stop):
            return
        newest_epoch = message.epoch
        if message.restock:
            slots.stock(message.restock)
        answer_to = replies if message.reply else channel
        backlog.extend([(newest_epoch, task, answer_to) for task in message.tasks])
