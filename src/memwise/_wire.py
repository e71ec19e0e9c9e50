"""How calls, results and exceptions are turned into bytes between the parent and its workers.

Plain pickle (protocol 5) is tried first because it is several times faster than cloudpickle;
cloudpickle is the fallback for lambdas, closures and interactively defined functions, which
plain pickle refuses. Every failure becomes a :class:`~memwise.errors.SerializationError` naming
*what* could not travel, so one bad argument fails one future and nothing else.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any, Protocol, Union

from memwise.errors import RemoteError, RemoteTraceback, SerializationError, SharedMemoryError

PROTOCOL = 5
# A ``__reduce__`` (or a constructor run by unpickling) that calls ``sys.exit`` has failed to
# (un)pickle like any other: it must fail that one call, not end a worker or the supervisor.
_PICKLING_FAILURES = (Exception, SystemExit)

# What failed to travel, for the error message; a callable defers building the text to the
# error path, since formatting it on every call costs as much as pickling a small call.
What = Union[str, Callable[[], str]]  # noqa: UP007 - a runtime alias on Python 3.10


class BufferSink(Protocol):
    """A pickle ``buffer_callback`` that can forget what it took (see :mod:`memwise._oob`)."""

    def __call__(self, buffer: pickle.PickleBuffer) -> bool: ...

    def reset(self) -> None: ...


def _text(what: What) -> str:
    return what if isinstance(what, str) else what()


def _interactive_main() -> bool:
    """Whether ``__main__`` is a REPL, a notebook or ``python -c``: it has no file.

    Workers can import a script's ``__main__`` again, but not an interactive one, so what is
    defined there must travel by value (cloudpickle) instead of by reference.
    """
    main = sys.modules.get("__main__")
    return main is not None and not hasattr(main, "__file__")


def dumps(
    obj: Any,
    what: What,
    *,
    calls: bool = False,
    buffer_callback: BufferSink | None = None,
) -> bytes:
    """Pickle ``obj``; ``what`` names it in the error message ("the arguments of f()").

    ``calls`` marks functions and their arguments sent to workers, which must go by value
    when they may come from an interactive ``__main__``. ``buffer_callback`` takes large
    buffers out of band (see :mod:`memwise._oob`).
    """
    first_error: BaseException | None = None
    if not (calls and _interactive_main()):
        try:
            return pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
        except SharedMemoryError:
            raise  # no room for a buffer: pickling the object another way cannot help
        except _PICKLING_FAILURES as exc:
            first_error = exc
    try:
        import cloudpickle

        if buffer_callback is not None:
            buffer_callback.reset()  # forget buffers taken by the failed attempt
        return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    except SharedMemoryError:
        raise
    except _PICKLING_FAILURES as exc:
        raise SerializationError(
            f"could not pickle {_text(what)}: {first_error or exc!r}; pass picklable values "
            "(module-level functions, plain data, numpy arrays) or make the object picklable"
        ) from exc


def loads(data: bytes, what: What, buffers: list[Any] | None = None) -> Any:
    """Unpickle ``data``; failures (missing modules, broken ``__reduce__``) become typed errors."""
    try:
        return pickle.loads(data, buffers=buffers)
    except _PICKLING_FAILURES as exc:
        raise SerializationError(
            f"could not unpickle {_text(what)}: {exc!r}; check that the class is importable in "
            "both processes and that its constructor accepts what __reduce__ gives it"
        ) from exc


def dump_exception(exc: BaseException) -> bytes:
    """Pickle an exception raised by a task, with its traceback as text.

    The pickled form is checked by unpickling it here, in the worker: an exception whose class
    pickles but cannot be rebuilt (a custom ``__init__`` with required arguments is the classic
    case) would otherwise fail in the parent, far from its cause. Such exceptions travel as
    :class:`RemoteError`, which keeps the type name, message and traceback.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = pickle.dumps((exc, tb), PROTOCOL)
        pickle.loads(data)
    except Exception:
        return pickle.dumps((RemoteError(type(exc).__qualname__, str(exc), tb), tb), PROTOCOL)
    return data


def load_exception(data: bytes) -> BaseException:
    """Rebuild an exception from :func:`dump_exception`, the remote traceback as its cause."""
    exc, tb = pickle.loads(data)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def describe(fn: Any) -> str:
    """A short name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)[:80]
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name
