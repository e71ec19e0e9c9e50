"""Where memwise's sequential round trip of a no-op goes, stage by stage (``bench overhead``).

Two kinds of figure, in µs:

- **CPU stages**, replayed in this process with the functions the pool itself calls, each
  timed as the best of several loops (so warm caches: a stage run right after a wake-up in a
  real round trip costs more). In the order a round trip meets them: pickling the call,
  creating its future and task, building the ``Run`` message, the worker decoding it and
  marking the task started in its ledger, running it (unpickle, call, pickle the result),
  encoding the ``Done``, the parent decoding it and unpickling the result, and resolving the
  future.
- **Floors**, measured: a bare ping-pong of one small message between two processes over a
  pair of pipes (what any process pool pays at least, once per round trip) and over a
  socket pair (``multiprocessing.Pipe()``'s transport), and a wake-up of one thread by
  another through a future (what a hop between threads costs).

``other`` is the measured round trip minus the CPU stages and the pipe ping-pong: the rest of
the wake-ups, the scheduler, and bookkeeping not replayed here.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from memwise.benchmarks._harness import best_time
from memwise.benchmarks._tasks import noop

# Each CPU stage: the best of REPEATS loops of LOOP calls.
LOOP = 2_000
REPEATS = 5
PINGS = 3_000

STAGE_NOTES = {
    "pickle_call": "submitting thread: pickle (fn, args, kwargs)",
    "future_task": "submitting thread: the Future and the Task",
    "encode_run": "submitting thread: the Run message",
    "decode_run": "worker: decode the Run",
    "ledger": "worker: mark the task started (shared ledger)",
    "execute": "worker: unpickle the call, run it, pickle the result",
    "encode_done": "worker: the Done message",
    "decode_done": "parent: decode the Done, unpickle the result",
    "resolve": "parent: mark the future running, set its result, read it",
    "pipe_pingpong": "floor: one message there and back between two processes (pipes)",
    "socketpair_pingpong": "the same over a socket pair (multiprocessing.Pipe())",
    "thread_wakeup": "one thread waking another through a future",
    "roundtrip": "measured submit-and-wait round trip (this run)",
    "other": "round trip - CPU stages - pipe ping-pong: wake-ups, scheduling, bookkeeping",
}
CPU_STAGES = (
    "pickle_call",
    "future_task",
    "encode_run",
    "decode_run",
    "ledger",
    "execute",
    "encode_done",
    "decode_done",
    "resolve",
)


def breakdown(roundtrip_us: float) -> dict[str, float]:
    """Every stage in µs, and ``other`` against ``roundtrip_us`` measured in the same run."""
    stages = cpu_stages()
    stages["pipe_pingpong"] = pingpong_us(duplex=False)
    stages["socketpair_pingpong"] = pingpong_us(duplex=True)
    stages["thread_wakeup"] = thread_wakeup_us()
    stages["roundtrip"] = roundtrip_us
    accounted = sum(stages[s] for s in CPU_STAGES) + stages["pipe_pingpong"]
    stages["other"] = roundtrip_us - accounted
    return stages


def cpu_stages() -> dict[str, float]:
    """The CPU work of one no-op round trip, stage by stage, replayed here (µs)."""
    from memwise import _oob, _wire
    from memwise.pool import worker
    from memwise.pool._protocol import OK, Run, TaskEntry, decode, encode, encode_done
    from memwise.pool.ledger import Ledger
    from memwise.pool.task import Task
    from memwise.shared import current_owner

    call: tuple[Any, ...] = (noop, (), {})
    payload = _wire.dumps(call, "the call", calls=True)
    run = encode(Run([TaskEntry(1, payload, ())], (), 0))
    result = _wire.dumps(None, "the result")
    done = encode_done(1, OK, result, 0.0, (), [], None, None)
    ledger = Ledger(multiprocessing.get_context())
    slots = _oob.WorkerSlots(current_owner(), _oob.DEFAULT_THRESHOLD)

    def pickle_call() -> None:
        outgoing = _oob.Outgoing(_oob.DEFAULT_THRESHOLD, False)
        _wire.dumps(call, lambda: "the call", calls=True, buffer_callback=outgoing)

    def future_task() -> None:
        Task(Future(), payload, noop)

    def encode_run() -> None:
        encode(Run([TaskEntry(1, payload, ())], (), 0))

    def decode_run() -> None:
        decode(bytearray(run))

    def decode_done() -> None:
        message = decode(bytearray(done))
        _wire.loads(message.payload, "the result", _oob.adopted(message.gifts))

    def resolve() -> None:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        future.set_result(None)
        future.result()

    stages: dict[str, Callable[[], object]] = {
        "pickle_call": pickle_call,
        "future_task": future_task,
        "encode_run": encode_run,
        "decode_run": decode_run,
        "ledger": lambda: ledger.begin(1, 0),
        "execute": lambda: worker.execute(1, payload, (), slots),
        "encode_done": lambda: encode_done(1, OK, result, 0.0, (), [], None, None),
        "decode_done": decode_done,
        "resolve": resolve,
    }
    return {name: _per_call_us(fn) for name, fn in stages.items()}


def _per_call_us(fn: Callable[[], object]) -> float:
    def loop() -> None:
        for _ in range(LOOP):
            fn()

    return best_time(loop, REPEATS) / LOOP * 1e6


def _echo(reader: Any, writer: Any) -> None:
    """The child of :func:`pingpong_us`: send back every message until the pipe closes."""
    read, write = reader.fileno(), writer.fileno()
    while True:
        data = os.read(read, 4096)
        if not data:
            return
        os.write(write, data)


def pingpong_us(duplex: bool) -> float:
    """Median µs for 96 bytes to go to a child process and back, through raw reads and writes.

    ``duplex=False``: one pipe each way; ``duplex=True``: one socket pair.
    """
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if duplex:
        here, there = ctx.Pipe(duplex=True)
        child_read = child_write = there
        mine_read = mine_write = here
    else:
        child_read, mine_write = ctx.Pipe(duplex=False)
        mine_read, child_write = ctx.Pipe(duplex=False)
    child = ctx.Process(  # type: ignore[attr-defined]
        target=_echo, args=(child_read, child_write), daemon=True
    )
    child.start()
    for conn in {child_read, child_write}:
        conn.close()
    message = b"x" * 96
    read, write = mine_read.fileno(), mine_write.fileno()
    times = []
    try:
        for _ in range(PINGS):
            start = time.perf_counter()
            os.write(write, message)
            got = 0
            while got < len(message):
                got += len(os.read(read, 4096))
            times.append(time.perf_counter() - start)
    finally:
        for conn in {mine_read, mine_write}:
            conn.close()
        child.join(10.0)
        if child.is_alive():
            child.kill()
            child.join()
    return statistics.median(times[PINGS // 10 :]) * 1e6


def thread_wakeup_us() -> float:
    """Median µs for a thread blocked on a future to run again once another thread sets it."""
    times: list[float] = []
    ready = threading.Event()
    futures: list[Future[float]] = []
    lock = threading.Lock()

    def setter() -> None:
        for _ in range(PINGS):
            ready.wait()
            ready.clear()
            with lock:
                future = futures[-1]
            future.set_result(time.perf_counter())

    thread = threading.Thread(target=setter, name="memwise-bench-setter", daemon=True)
    thread.start()
    for _ in range(PINGS):
        future: Future[float] = Future()
        with lock:
            futures.append(future)
        ready.set()
        sent = future.result()
        times.append(time.perf_counter() - sent)
    thread.join()
    return statistics.median(times[PINGS // 10 :]) * 1e6
