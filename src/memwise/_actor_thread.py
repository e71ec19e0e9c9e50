"""An actor's object in a thread of this process: the ``isolation="never"`` side of actors.

Same interface as the process side (calls in order, latest-wins, timeouts, trim), with the one
difference a thread imposes: it cannot be killed. An overdue call is abandoned (it runs on,
its result discarded), the calls queued behind it are cancelled, and a new thread with a new
object takes over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from memwise.errors import TaskTimeout, WorkerInitError

Spec = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def qualname(cls: Callable[..., Any]) -> str:
    return getattr(cls, "__qualname__", repr(cls))


class ThreadBackend:
    """The same object in one thread of this process, calls in order, latest-wins included.

    A thread cannot be killed: an overdue call is abandoned (it runs on, its result
    discarded) and a new thread with a new object takes over.
    """

    def __init__(self, spec: Spec, trim: bool) -> None:
        self._spec = spec
        self._trim = trim
        self._lock = threading.Lock()
        self._latest: dict[str, Future[Any]] = {}
        self._inflight: set[Future[Any]] = set()
        self._restarts = 0
        self._executor, self._instance = self._begin()

    def _begin(self) -> tuple[ThreadPoolExecutor, Future[Any]]:
        cls, args, kwargs = self._spec
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"memwise-{qualname(cls)}")
        return executor, executor.submit(cls, *args, **kwargs)

    def restarts(self) -> int:
        return self._restarts

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        latest: bool,
        timeout: float | None,
    ) -> Future[Any]:
        outer: Future[Any] | None = None if timeout is None else Future()
        with self._lock:
            if latest:
                previous = self._latest.get(name)
                if previous is not None:
                    previous.cancel()
            executor = self._executor
            inner = executor.submit(
                self._invoke, self._instance, name, args, kwargs, outer, timeout, executor
            )
            if latest:
                self._latest[name] = inner
            self._inflight.add(inner)
        inner.add_done_callback(self._inflight.discard)
        if outer is None:
            return inner
        inner.add_done_callback(lambda done: _settle(outer, done))
        outer.add_done_callback(lambda done: done.cancelled() and inner.cancel())
        return outer

    def _invoke(
        self,
        instance: Future[Any],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outer: Future[Any] | None,
        timeout: float | None,
        executor: ThreadPoolExecutor,
    ) -> Any:
        # The constructor ran first on this same thread; its error is every call's error,
        # reported as a process actor reports it.
        try:
            target = instance.result()
        except BaseException as exc:
            raise WorkerInitError(
                f"the actor's constructor raised {type(exc).__name__}: {exc}"
            ) from exc
        timer = None
        if outer is not None and timeout is not None:
            timer = threading.Timer(timeout, self._expire, (outer, name, timeout, executor))
            timer.daemon = True
            timer.start()
        try:
            return getattr(target, name)(*args, **kwargs)
        finally:
            if timer is not None:
                timer.cancel()
            if self._trim:
                from memwise.memory import trim

                trim()

    def _expire(
        self, outer: Future[Any], name: str, timeout: float, executor: ThreadPoolExecutor
    ) -> None:
        try:
            outer.set_exception(
                TaskTimeout(
                    f"the call {name}() ran longer than its timeout of {timeout} s; a thread "
                    "cannot be killed, so it was abandoned and a new object took over"
                )
            )
        except InvalidStateError:
            return  # it finished (or was cancelled) just in time
        with self._lock:
            if self._executor is not executor:
                return  # already replaced
            self._restarts += 1
            self._executor, self._instance = self._begin()
            self._latest.clear()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self, wait: bool, timeout: float | None) -> None:
        with self._lock:
            executor = self._executor
            inflight = list(self._inflight)
        executor.shutdown(wait=False, cancel_futures=True)
        # Cancelled calls count as done for done(), not for wait(): leave them out.
        inflight = [future for future in inflight if not future.done()]
        if wait and not wait_futures(inflight, timeout).not_done:
            executor.shutdown(wait=True)  # the thread is ending: see it gone


def _settle(outer: Future[Any], done: Future[Any]) -> None:
    """Copy a finished call's outcome to the future its caller holds, unless it timed out."""
    try:
        if done.cancelled():
            outer.cancel()
        elif done.exception() is not None:
            outer.set_exception(done.exception())
        else:
            outer.set_result(done.result())
    except InvalidStateError:
        pass  # the caller was already told: a timeout
