"""The pool's backend on Ray: ``WorkerPool(..., backend="ray")``. The only module importing ray.

Each worker lane is one Ray actor (:class:`LaneActor`) running one call at a time; the
scheduling, keys, retries, timeouts, recycling and events are memwise's own
(:mod:`memwise.pool.remote_lanes`), so they behave as on the local pool. What Ray provides is the
processes, wherever the cluster has room, and the transport: calls and results travel as Ray
serializes them, large arrays through the object store (read-only on arrival, as memwise's
own zero-copy views are). See docs/ray.md for what holds and what differs.

``connect`` joins a running cluster (``address=`` or ``RAY_ADDRESS``) or starts a local one,
on loopback unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

# Under ``uv run``, Ray would start its workers with ``uv run`` in a copy of the project, a
# fresh environment without this one's packages (workers then die on ``import ray``): workers
# of this very interpreter and environment are what a pool must get. Ray reads this on import.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray
import ray.exceptions

from memwise import _wire
from memwise.errors import SerializationError
from memwise.memory import private_memory, trim
from memwise.pool.events import PoolEvent
from memwise.pool.options import TaskOptions
from memwise.pool.remote_lane import LaneTask, Outcome, Status
from memwise.pool.remote_lanes import LaneConfig, LaneSupervisor
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.subscribers import Subscription

__all__ = ["LOOPBACK_NODE_IP", "LaneActor", "RayBackend", "connect"]

# Ray rewrites 127.0.0.1, ::1 and "localhost" to the machine's outward address (its
# resolve_ip_for_localhost), so a node told to use 127.0.0.1 would talk over the network
# interface. Any other address of the loopback range stays as given.
LOOPBACK_NODE_IP = "127.0.0.2"


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Make sure this process is connected to a Ray cluster.

    Already connected: nothing to do. Otherwise ``address`` (or ``RAY_ADDRESS``) names a
    running cluster to join; without either a local cluster is started, bound to loopback,
    with ``num_cpus`` CPUs (default: all). A cluster on a loopback address is joined as a
    node of that address, so that the driver finds its local node there too.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK_NODE_IP,
            **options,
        )
        return
    host = address.rsplit(":", 1)[0].removeprefix("ray://")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        options["_node_ip_address"] = host
    ray.init(address=address, **options)


@ray.remote(max_restarts=0, max_task_retries=0)  # a sync actor runs one call at a time
class LaneActor:
    """One worker lane: runs calls one at a time, reporting its private memory after each."""

    def __init__(self, trim_after: bool) -> None:
        self._trim = trim_after

    def ready(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> Any:
        """Run the initializer; report (pid, node address), or what the initializer raised."""
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                return (Status.RAISED.value, _wire.dump_exception(exc), None)
        return (Status.OK.value, (os.getpid(), ray.util.get_node_ip_address()), None)

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]) -> Any:
        """Run ``calls`` in order, yielding each one's outcome as soon as it is there.

        A generator, so Ray streams the outcomes back one by one: the caller learns of each
        result (and, if this actor dies, of which call it died in) without waiting for the
        batch, while the batch costs one actor call instead of one per task.
        """
        for fn, args, kwargs in calls:
            try:
                result: Any = (Status.OK.value, fn(*args, **kwargs))
            except BaseException as exc:
                result = (Status.RAISED.value, _wire.dump_exception(exc))
            if self._trim:
                trim()
            yield (*result, private_memory())
            del result  # not kept alive while the next call runs


class _Call:
    """One call in flight on an actor; its outcome once collected."""

    __slots__ = ("notify", "outcome")

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify: Callable[[], None] | None = notify
        self.outcome: Outcome | None = None

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        notify, self.notify = self.notify, None  # nothing kept once it has been told
        assert notify is not None
        notify()


class _Actor:
    """A lane's actor and the thread that collects its outcomes.

    An actor runs its calls in the order they were made, so the outcomes are fetched in that
    order by one thread per actor, each with a blocking ``ray.get`` (which releases the GIL
    while it waits): per call, the cheapest way Ray offers to learn of a result.
    (``ObjectRef.future()`` costs about a third more of this process's CPU per call, and
    polling with ``ray.wait`` grows with the calls in flight.) The thread ends once the actor
    is closed and every call sent to it has its outcome.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._sent: queue.SimpleQueue[tuple[Any, list[_Call]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._collect, name="memwise-ray-results")
        self._thread.daemon = True
        self._thread.start()

    def watch(self, source: Any, notifiers: list[Callable[[], None]]) -> list[_Call]:
        """Collect the outcomes of ``source``: one result ref, or the stream of a batch."""
        calls = [_Call(notify) for notify in notifiers]
        self._sent.put((source, calls))
        return calls

    def close(self) -> None:
        self._sent.put(None)

    def _collect(self) -> None:
        while (sent := self._sent.get()) is not None:
            self._finish(*sent)
            # Nothing of a finished call stays here: its result belongs to its future alone.
            del sent

    @staticmethod
    def _finish(source: Any, calls: list[_Call]) -> None:
        if isinstance(source, ray.ObjectRef):
            calls[0].finish(_outcome(source))
            return
        ended: Outcome | None = None  # once the stream broke off: for the calls after
        for call in calls:
            if ended is None:
                try:
                    outcome = _outcome(next(source))
                except StopIteration:
                    ended = outcome = Outcome(Status.NOT_RUN, detail="its batch ended early")
                except ray.exceptions.RayError as exc:
                    outcome = _failure(exc)
                if outcome.status is Status.DIED:
                    ended = outcome
                elif call is calls[0] and len(calls) > 1 and _not_rebuilt(outcome):
                    ended = outcome = Outcome(Status.RESEND_ALONE)
            call.finish(ended or outcome)


def _outcome(ref: Any) -> Outcome:
    """What the call behind ``ref`` gave, waiting for it."""
    try:
        status, value, *rest = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return _failure(exc)
    if status == Status.RAISED.value:
        return Outcome(Status.RAISED, _wire.load_exception(value), rest[0] if rest else None)
    return Outcome(Status.OK, value, rest[0] if rest else None)


def _not_rebuilt(outcome: Outcome) -> bool:
    """Whether a batch failed before its first call ran: Ray could not rebuild its arguments
    on the worker (a system error; a result that cannot be stored is a ``TypeError``)."""
    cause = outcome.value.__cause__ if outcome.status is Status.RAISED else None
    return isinstance(cause, ray.exceptions.RaySystemError)


def _failure(exc: BaseException) -> Outcome:
    if isinstance(exc, ray.exceptions.RayActorError):
        return Outcome(Status.DIED, detail=_death(exc))
    # The call never reached the function (its arguments could not be rebuilt on the
    # worker), or its result could not be stored: it fails alone.
    error = SerializationError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return Outcome(Status.RAISED, error)


class _Transport:
    """How :class:`LaneSupervisor` reaches Ray actors (see ``Transport``)."""

    def __init__(
        self,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        trim_after: bool,
        actor_options: dict[str, Any],
    ) -> None:
        self._init = (initializer, initargs)
        self._trim = trim_after
        # SPREAD puts lanes on different nodes while there are several.
        self._actor_options = {"scheduling_strategy": "SPREAD", **actor_options}

    def start(self, lane: int, notify: Callable[[], None]) -> tuple[_Actor, _Call]:
        actor = _Actor(LaneActor.options(**self._actor_options).remote(self._trim))  # type: ignore[attr-defined]
        return actor, actor.watch(actor.handle.ready.remote(*self._init), [notify])[0]

    def send(
        self, actor: _Actor, tasks: list[LaneTask], notifiers: list[Callable[[], None]]
    ) -> list[_Call]:
        try:
            stream = actor.handle.run.remote([task.call for task in tasks])
        except Exception as exc:
            raise SerializationError(
                f"could not send {', '.join(map(str, tasks))}: {exc!r}; pass picklable values "
                "(module-level functions, plain data, numpy arrays) or make the object picklable"
            ) from exc
        return actor.watch(stream, notifiers)

    def outcome(self, call: _Call) -> Outcome:
        assert call.outcome is not None, "outcome() before the call's notification"
        return call.outcome

    def kill(self, actor: _Actor | None) -> None:
        if actor is None:
            return
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:
            pass  # already gone with its node, or the cluster is shutting down
        actor.close()  # its calls in flight now fail fast; then its thread ends


def _death(exc: BaseException) -> str:
    """Ray's account of an actor's death, in one line: its exit type and the first sentences."""
    text = " ".join(str(exc).split())
    for marker in ("Worker exit type:", "The actor is dead because", "The actor died"):
        if marker in text:
            text = text[text.index(marker) :]
            break
    text = text.split(" Some common causes")[0]
    return f"{type(exc).__name__}: {text[:240]}"


class RayBackend:
    """``PoolBackend`` on Ray actors (see :mod:`memwise.pool.backend`)."""

    def __init__(
        self,
        config: LaneConfig,
        *,
        address: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        trim: bool = False,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        connect(address)
        transport = _Transport(initializer, initargs, trim, dict(actor_options or {}))
        self._supervisor = LaneSupervisor(config, transport, "memwise-ray")
        self._supervisor.start()

    @property
    def workers(self) -> int:
        return self._supervisor.workers

    def submit(
        self, options: TaskOptions, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Future[Any]:
        return self._supervisor.submit(options, (fn, args, kwargs))

    def close(self, cancel_futures: bool) -> None:
        self._supervisor.close(cancel_futures)

    def join(self, timeout: float | None = None) -> bool:
        return self._supervisor.join(timeout)

    def terminate(self, error: BaseException) -> None:
        self._supervisor.terminate(error)

    def snapshot(self) -> PoolSnapshot:
        return self._supervisor.snapshot()

    def subscribe(self, callback: Callable[[PoolEvent], Any]) -> Subscription:
        return self._supervisor.hub.subscribe(callback)

    def unsubscribe(self, callback: Callable[[PoolEvent], Any]) -> None:
        self._supervisor.hub.unsubscribe(callback)

    def resize(self, workers: int) -> None:
        self._supervisor.resize(workers)
