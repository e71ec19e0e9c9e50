"""Actors: one object living in its own process; Sessions: a few warm actors by key.

An interactive application (a colour-grading preview, a recognizer per audio file) wants a
stateful object per document whose memory goes back to the OS when the document is closed.
Inside one long-running process that never happens; a process per object makes it certain:
``actor.close()`` ends the process and the OS takes back everything.

An actor is a one-worker :class:`~memwise.pool.WorkerPool` whose initializer builds the object,
so it inherits the pool's crash handling: a crash restarts the process (re-running the
constructor) up to ``restarts`` times, the call in flight is retried once, and latest-wins
calls are the pool's coalescing. ``isolation="never"`` runs the same object in a thread of this
process with the same interface, for platforms or moments where processes are not an option.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, Literal, TypeVar

from memwise.errors import BrokenPool, ClosedError, WorkerInitError

__all__ = ["Actor", "Sessions", "spawn"]

Isolation = Literal["auto", "always", "never"]
K = TypeVar("K", bound=Hashable)

# The object an actor process hosts (one per process).
_instance: Any = None


def _construct(cls: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    global _instance
    _instance = cls(*args, **kwargs)


def _invoke(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(_instance, name)(*args, **kwargs)


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
        start_method: str | None = None,
        init_timeout: float = 60.0,
    ) -> None:
        if isolation not in ("auto", "always", "never"):
            raise ValueError(f"isolation must be 'auto', 'always' or 'never', not {isolation!r}")
        self._spec = (cls, args, kwargs)
        self._isolation = isolation
        self._restarts = restarts
        self._start_method = start_method
        self._init_timeout = init_timeout
        self._lock = threading.Lock()
        self._backend: _ProcessBackend | _ThreadBackend | None = None
        self._error: BaseException | None = None
        self._closed = False

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

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call method ``name`` of the hosted object; returns a future of its result."""
        return self._call(name, args, kwargs, latest=False)

    def latest(self, name: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Like :meth:`call`, but queued, not-yet-started calls of ``name`` are cancelled.

        For interactive previews: only the newest request matters.
        """
        return self._call(name, args, kwargs, latest=True)

    def _call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], latest: bool
    ) -> Future[Any]:
        try:
            return self._started().call(name, args, kwargs, latest)
        except (WorkerInitError, BrokenPool) as exc:
            # The constructor failed, or the process crashed more than `restarts` times:
            # every call fails with that, on its future, as in a thread.
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def close(self, wait: bool = True) -> None:
        """End the hosting process (its memory returns to the OS); queued calls are cancelled.

        With ``wait=False``, return at once; the process ends after its current call.
        """
        with self._lock:
            self._closed = True
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close(wait)

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
                except (WorkerInitError, BrokenPool) as exc:
                    self._error = exc
                    raise
            return self._backend

    def _start(self) -> _ProcessBackend | _ThreadBackend:
        if self._isolation == "never":
            return _ThreadBackend(*self._spec)
        try:
            return _ProcessBackend(
                self._spec, self._restarts, self._start_method, self._init_timeout
            )
        except (OSError, BrokenPool, WorkerInitError) as exc:
            if self._isolation == "always" or not _no_process(exc):
                raise
            warnings.warn(
                f"could not start a process for {_name(self._spec[0])} ({exc}); running it in "
                "a thread of this process instead (isolation='auto')",
                RuntimeWarning,
                stacklevel=4,
            )
            return _ThreadBackend(*self._spec)


def _no_process(exc: BaseException) -> bool:
    """Whether the OS refused a process (fall back to a thread), as opposed to the object's
    constructor failing or killing its process (which it would do in a thread too, taking this
    process down with it)."""
    return isinstance(exc, OSError) or isinstance(exc.__cause__, OSError)


def _name(cls: Callable[..., Any]) -> str:
    return getattr(cls, "__qualname__", repr(cls))


class _ProcessBackend:
    def __init__(
        self,
        spec: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        restarts: int,
        start_method: str | None,
        init_timeout: float,
    ) -> None:
        from memwise.pool.api import WorkerPool

        self._pool = WorkerPool(
            1,
            initializer=_construct,
            initargs=spec,
            init_timeout=init_timeout,
            retries=1,
            max_restarts=restarts,
            start_method=start_method,
        )

    def pid(self) -> int | None:
        pid = self._pool.stats()["slots"][0]["pid"]
        return None if pid is None else int(pid)

    def call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], latest: bool
    ) -> Future[Any]:
        return self._pool.options(coalesce=name if latest else None).submit(
            _invoke, name, args, kwargs
        )

    def close(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


class _ThreadBackend:
    """The same object in one thread of this process, calls in order, latest-wins included."""

    def __init__(
        self, cls: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"memwise-{_name(cls)}")
        self._instance = self._executor.submit(cls, *args, **kwargs)
        self._lock = threading.Lock()
        self._latest: dict[str, Future[Any]] = {}

    def call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], latest: bool
    ) -> Future[Any]:
        with self._lock:
            if latest:
                previous = self._latest.get(name)
                if previous is not None:
                    previous.cancel()
            future = self._executor.submit(self._invoke, name, args, kwargs)
            if latest:
                self._latest[name] = future
        return future

    def _invoke(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The constructor ran first on this same thread; its error is every call's error,
        # reported as a process actor reports it.
        try:
            instance = self._instance.result()
        except BaseException as exc:
            raise WorkerInitError(
                f"the actor's constructor raised {type(exc).__name__}: {exc}"
            ) from exc
        return getattr(instance, name)(*args, **kwargs)

    def close(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


def spawn(
    cls: Callable[..., Any],
    /,
    *args: Any,
    isolation: Isolation = "auto",
    restarts: int = 3,
    start_method: str | None = None,
    init_timeout: float = 60.0,
    **kwargs: Any,
) -> Actor:
    """An :class:`Actor` hosting ``cls(*args, **kwargs)`` in its own process.

    Args:
        isolation: ``"always"``: a process, or an error; ``"never"``: a thread of this
            process; ``"auto"``: a process, falling back to a thread (with a warning) if a
            process cannot be started.
        restarts: how many times a crashed process is restarted (re-running the
            constructor) before calls fail with ``BrokenPool``. The call in flight when it
            crashed is retried once, then fails with ``WorkerCrashed``.
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
        start_method=start_method,
        init_timeout=init_timeout,
    )


class Sessions(Generic[K]):
    """One actor per key (an image, a file), the ``keep`` most recently used kept warm.

    ``sessions[key]`` returns the key's actor, creating it with ``factory(key)``; creating one
    beyond ``keep`` closes the least recently used (in the background: its process ends after
    its current call), so about ``keep`` processes hold memory.
    """

    def __init__(self, factory: Callable[[K], Actor], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._factory = factory
        self.keep = keep
        self._actors: OrderedDict[K, Actor] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, key: K) -> Actor:
        with self._lock:
            actor = self._actors.get(key)
            if actor is not None:
                self._actors.move_to_end(key)
                return actor
            actor = self._factory(key)
            self._actors[key] = actor
            evicted = []
            while len(self._actors) > self.keep:
                evicted.append(self._actors.popitem(last=False)[1])
        for old in evicted:
            # Without waiting: switching to a new key must not wait for the old key's call.
            old.close(wait=False)
        return actor

    def __contains__(self, key: object) -> bool:
        return key in self._actors

    def __len__(self) -> int:
        return len(self._actors)

    def keys(self) -> list[K]:
        """Warm keys, least recently used first."""
        with self._lock:
            return list(self._actors)

    def close(self, key: K | None = None) -> None:
        """Close one session, or all of them."""
        with self._lock:
            if key is None:
                actors = list(self._actors.values())
                self._actors.clear()
            else:
                popped = self._actors.pop(key, None)
                actors = [] if popped is None else [popped]
        for actor in actors:
            actor.close()

    def __enter__(self) -> Sessions[K]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
