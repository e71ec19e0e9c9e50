"""Actors: one object living in its own process (see :mod:`memwise.sessions` for a few by key).

An interactive application (a colour-grading preview, a recognizer per audio file) wants a
stateful object per document whose memory goes back to the OS when the document is closed.
Inside one long-running process that never happens; a process per object makes it certain:
``actor.close()`` ends the process and the OS takes back everything.

An actor is a one-worker :class:`~memwise.pool.WorkerPool` whose initializer builds the object,
so it inherits the pool's crash handling: a crash restarts the process (re-running the
constructor) up to ``restarts`` times, the call in flight is retried once, and latest-wins
calls are the pool's coalescing, and an overdue call (``actor.options(timeout=...)``) kills
the process, which is replaced. ``isolation="never"`` runs the same object in a thread of this
process with the same interface, for platforms or moments where processes are not an option;
``"auto"`` picks by platform and can be overridden with the ``MEMWISE_ISOLATION`` environment
variable.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

from memwise._actor_thread import Spec
from memwise._actor_thread import ThreadBackend as _ThreadBackend
from memwise._actor_thread import qualname as _name
from memwise.errors import BrokenPool, ClosedError, SerializationError, WorkerInitError

__all__ = ["ENV_VAR", "Actor", "ActorCaller", "resolve_isolation", "spawn"]

Isolation = Literal["auto", "always", "never"]
ENV_VAR = "MEMWISE_ISOLATION"
# The actor's own default per-call timeout (as opposed to None: no limit).
_INHERIT: Any = object()

# The object an actor process hosts (one per process).
_instance: Any = None


def _construct(cls: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    global _instance
    _instance = cls(*args, **kwargs)


def _invoke(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(_instance, name)(*args, **kwargs)


def resolve_isolation(isolation: Isolation) -> Isolation:
    """What ``isolation`` means on this machine: ``"auto"`` is decided here.

    ``$MEMWISE_ISOLATION`` (``auto``, ``always`` or ``never``), if set, replaces ``"auto"``;
    an explicit ``"always"`` or ``"never"`` in code is kept. ``"auto"`` stays ``"auto"`` (a
    process, with a thread as fallback) where processes are dependable, and becomes
    ``"never"`` on Windows, where starting a process per document is slow and fragile.
    """
    if isolation not in ("auto", "always", "never"):
        raise ValueError(f"isolation must be 'auto', 'always' or 'never', not {isolation!r}")
    if isolation != "auto":
        return isolation
    chosen = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if chosen not in ("auto", "always", "never"):
        raise ValueError(
            f"the environment variable {ENV_VAR}={os.environ[ENV_VAR]!r} must be 'auto', "
            "'always' or 'never'; unset it or fix it"
        )
    if chosen == "auto" and sys.platform == "win32":
        return "never"
    return chosen  # type: ignore[return-value]


class ActorCaller:
    """An actor with call options bound: ``actor.options(timeout=2).latest("preview", p)``."""

    def __init__(self, actor: Actor, timeout: float | None) -> None:
        self._actor = actor
        self._timeout = timeout

    def options(self, *, timeout: float | None = _INHERIT) -> ActorCaller:
        """A copy with other options."""
        return ActorCaller(self._actor, self._timeout if timeout is _INHERIT else timeout)

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """As :meth:`Actor.call`, with these options."""
        return self._actor._call(name, args, kwargs, latest=False, timeout=self._timeout)

    def latest(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """As :meth:`Actor.latest`, with these options."""
        return self._actor._call(name, args, kwargs, latest=True, timeout=self._timeout)


class Actor:
    """A handle on one object hosted in a process (or a thread, with ``isolation="never"``).

    Created by :func:`spawn`. The process starts lazily, on the first call, so creating an
    actor is free; a constructor error fails every call's future with ``WorkerInitError``.
    """

    def __init__(
        self,
        cls: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        isolation: Isolation = "auto",
        restarts: int = 3,
        timeout: float | None = None,
        trim: bool = False,
        start_method: str | None = None,
        init_timeout: float = 60.0,
    ) -> None:
        self._spec = (cls, args, kwargs)
        self._isolation = resolve_isolation(isolation)
        self._restarts = restarts
        self._timeout = timeout
        self._trim = trim
        self._start_method = start_method
        self._init_timeout = init_timeout
        self._lock = threading.Lock()
        self._backend: _ProcessBackend | _ThreadBackend | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._pending = 0
        self._last_active = time.monotonic()

    @property
    def isolation(self) -> str:
        """``"process"`` or ``"thread"`` once started; ``"not started"`` before."""
        backend = self._backend
        if backend is None:
            return "not started"
        return "process" if isinstance(backend, _ProcessBackend) else "thread"

    @property
    def pid(self) -> int | None:
        """The pid of the hosting process, if there is one right now."""
        backend = self._backend
        return backend.pid() if isinstance(backend, _ProcessBackend) else None

    @property
    def restarts(self) -> int:
        """How many times the object was built anew after a crash or an overdue call."""
        backend = self._backend
        return 0 if backend is None else backend.restarts()

    @property
    def idle_for(self) -> float:
        """Seconds since the last call finished; 0.0 while a call is queued or running."""
        # Without the lock, which a starting process holds for seconds: two plain reads.
        pending, last_active = self._pending, self._last_active
        return 0.0 if pending else time.monotonic() - last_active

    def options(self, *, timeout: float | None = _INHERIT) -> ActorCaller:
        """This actor with call options bound: ``actor.options(timeout=2).call("f", x)``.

        ``timeout``: seconds a call may run; an overdue call's process is killed and
        replaced (re-running the constructor, counted in :attr:`restarts`) and its future
        fails with ``TaskTimeout``. In a thread, which cannot be killed, the call runs on
        unobserved, calls queued behind it are cancelled, and a new thread with a new object
        takes over.
        """
        return ActorCaller(self, self._timeout).options(timeout=timeout)

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call method ``name`` of the hosted object; returns a future of its result.

        Every keyword reaches the method; call options go through :meth:`options`.
        """
        return self._call(name, args, kwargs, latest=False, timeout=self._timeout)

    def latest(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Like :meth:`call`, but queued, not-yet-started calls of ``name`` are cancelled.

        For interactive previews: only the newest request matters.
        """
        return self._call(name, args, kwargs, latest=True, timeout=self._timeout)

    def _call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        latest: bool,
        timeout: float | None,
    ) -> Future[Any]:
        # Busy from here on, so that Sessions' idle reaper leaves an actor whose process is
        # still starting for this call alone.
        with self._lock:
            self._pending += 1
            self._last_active = time.monotonic()
        try:
            future = self._started().call(name, args, kwargs, latest, timeout)
        except (WorkerInitError, BrokenPool, SerializationError) as exc:
            # The constructor failed, its arguments cannot travel, or the process crashed
            # more than `restarts` times: every call fails with that, on its future.
            future = Future()
            future.set_exception(exc)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)  # at once if it is already done
        return future

    def touch(self) -> None:
        """Count this moment as use (for :class:`Sessions`' ``idle``)."""
        with self._lock:
            self._last_active = time.monotonic()

    def _finished(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._pending -= 1
            self._last_active = time.monotonic()

    def close(self, wait: bool = True, timeout: float | None = 2.0) -> None:
        """End the hosting process (its memory returns to the OS); queued calls are cancelled.

        The running call gets ``timeout`` seconds to finish (None: as long as it takes); then
        the process is killed and the call fails with ``BrokenPool``. A thread cannot be
        killed: past ``timeout``, close returns and the thread ends when its call returns.
        With ``wait=False``, return at once; the process ends after its current call.
        """
        with self._lock:
            self._closed = True
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close(wait, timeout)

    def __enter__(self) -> Actor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _started(self) -> _ProcessBackend | _ThreadBackend:
        with self._lock:
            if self._closed:
                raise ClosedError("this actor is closed; spawn a new one")
            if self._error is not None:
                raise self._error
            if self._backend is None:
                try:
                    self._backend = self._start()
                except (WorkerInitError, BrokenPool, SerializationError) as exc:
                    self._error = exc
                    raise
            return self._backend

    def _start(self) -> _ProcessBackend | _ThreadBackend:
        if self._isolation == "never":
            return _ThreadBackend(self._spec, self._trim)
        try:
            return _ProcessBackend(
                self._spec, self._restarts, self._start_method, self._init_timeout, self._trim
            )
        except (OSError, BrokenPool, WorkerInitError, SerializationError) as exc:
            if self._isolation == "always" or not _no_process(exc):
                raise
            reason = (
                "its constructor arguments cannot be pickled"
                if isinstance(exc, SerializationError)
                else "could not start a process"
            )
            warnings.warn(
                f"{_name(self._spec[0])}: {reason} ({exc}); running it in a thread of this "
                "process instead (isolation='auto')",
                RuntimeWarning,
                stacklevel=5,
            )
            return _ThreadBackend(self._spec, self._trim)


def _no_process(exc: BaseException) -> bool:
    """Whether no process can host the object (fall back to a thread): the OS refused one,
    or the constructor's arguments cannot travel to one; as opposed to the constructor failing
    or killing its process (which it would do in a thread too, taking this process down)."""
    return isinstance(exc, (OSError, SerializationError)) or isinstance(exc.__cause__, OSError)


class _ProcessBackend:
    def __init__(
        self,
        spec: Spec,
        restarts: int,
        start_method: str | None,
        init_timeout: float,
        trim: bool,
    ) -> None:
        from memwise.pool.api import WorkerPool

        self._pool = WorkerPool(
            1,
            initializer=_construct,
            initargs=spec,
            init_timeout=init_timeout,
            retries=1,
            max_restarts=restarts,
            trim=trim,
            start_method=start_method,
        )

    def pid(self) -> int | None:
        return self._pool.snapshot().workers[0].pid

    def restarts(self) -> int:
        return self._pool.snapshot().restarts

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        latest: bool,
        timeout: float | None,
    ) -> Future[Any]:
        options = self._pool.options(coalesce=name if latest else None, timeout=timeout)
        return options.submit(_invoke, name, args, kwargs)

    def close(self, wait: bool, timeout: float | None) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True, timeout=timeout)


def spawn(
    cls: Callable[..., Any],
    /,
    *args: Any,
    isolation: Isolation = "auto",
    restarts: int = 3,
    timeout: float | None = None,
    trim: bool = False,
    start_method: str | None = None,
    init_timeout: float = 60.0,
    **kwargs: Any,
) -> Actor:
    """An :class:`Actor` hosting ``cls(*args, **kwargs)`` in its own process.

    Args:
        isolation: ``"always"``: a process, or an error (also for constructor arguments
            that cannot be pickled); ``"never"``: a thread of this process; ``"auto"``
            (see :func:`resolve_isolation`, and ``$MEMWISE_ISOLATION``): a process where
            processes are dependable, falling back to a thread, with a warning, if a process
            cannot be started or the arguments cannot be pickled.
        restarts: how many times the process is restarted (re-running the constructor)
            after a crash or an overdue call before calls fail with ``BrokenPool``. The call
            in flight when it crashed is retried once, then fails with ``WorkerCrashed``.
        timeout: the default time limit of every call (see :meth:`Actor.options`).
        trim: give freed heap memory back to the OS after every call (glibc ``malloc_trim``).
        start_method, init_timeout: as for :class:`~memwise.pool.WorkerPool`.

    These keywords are spawn's own; pass a constructor argument of the same name through
    ``functools.partial(cls, ...)``.
    """
    return Actor(
        cls,
        args,
        kwargs,
        isolation=isolation,
        restarts=restarts,
        timeout=timeout,
        trim=trim,
        start_method=start_method,
        init_timeout=init_timeout,
    )
