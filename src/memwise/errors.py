"""Every error memwise raises on purpose.

Each message says what happened and what to do about it. Errors that can cross a process boundary
keep their arguments in ``args`` so they pickle and unpickle unchanged.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "BrokenPool",
    "BufferPoolExhausted",
    "ClosedError",
    "DataError",
    "DataNotFound",
    "DependencyError",
    "InsufficientMemory",
    "InvalidAudio",
    "LockTimeout",
    "MemoryBudgetExceeded",
    "MemwiseError",
    "MissingMainGuard",
    "PluginError",
    "ProtocolError",
    "ReentrantComputation",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "ServerConfigError",
    "SharedMemoryError",
    "SharedMemoryExhausted",
    "TaskTimeout",
    "TranscriptionFailed",
    "WorkerCrashed",
    "WorkerInitError",
]


class MemwiseError(Exception):
    """Base class of the errors memwise raises itself."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of the re-raised exception so that the traceback printed in the
    parent shows where the error happened in the worker, as ``ProcessPoolExecutor`` does.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class BrokenPool(MemwiseError, BrokenExecutor):
    """The pool can no longer run tasks: workers keep dying before doing any work.

    Raised instead of respawning forever, typically because the initializer crashes or the
    machine cannot start processes. The cause (``__cause__``) holds the last failure.
    """


class ClosedError(MemwiseError, RuntimeError):
    """The object was closed or shut down (a pool, an actor, a BufferPool, a SlotPool).

    One type for "used after close" everywhere; a ``RuntimeError``, as ``concurrent.futures``
    raises for ``submit`` after ``shutdown``. Create a new object instead.
    """


class WorkerCrashed(MemwiseError):
    """The worker process running this task died (killed, segfault, ``os._exit``).

    Attributes name the exit code or signal, the pid and the task, so the failure can be
    reproduced. Use ``retries=`` to re-run such tasks on a fresh worker.
    """

    def __init__(
        self, message: str, pid: int | None = None, exitcode: int | None = None, task: str = ""
    ) -> None:
        super().__init__(message, pid, exitcode, task)
        self.pid = pid
        self.exitcode = exitcode
        self.task = task

    def __str__(self) -> str:
        return str(self.args[0])


class TaskTimeout(MemwiseError, TimeoutError):
    """A task ran longer than its ``timeout``; its worker was killed and replaced."""


class WorkerInitError(MemwiseError):
    """A worker's initializer raised, crashed or did not finish within ``init_timeout``."""


class MissingMainGuard(WorkerInitError, RuntimeError):
    """A pool was created while a new worker imported the main script.

    Every worker started by forkserver or spawn imports the main script again, so code at its
    top level runs in each of them. Put the code that creates pools (or actors) under
    ``if __name__ == "__main__":``.
    """


class SerializationError(MemwiseError, TypeError):
    """An argument, result or exception could not be pickled or unpickled.

    Nothing else is affected: the pool stays healthy and other tasks go on.
    """


class RemoteError(MemwiseError):
    """A task raised an exception that could not travel back to the parent as itself.

    Keeps the original type name, message and remote traceback as text.
    """

    def __init__(self, type_name: str, message: str, tb: str = "") -> None:
        super().__init__(type_name, message, tb)
        self.type_name = type_name
        self.message = message
        self.tb = tb

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message} (the exception could not be pickled, so it is "
            "reported as RemoteError; make it picklable to get the original type back)"
        )


class SharedMemoryError(MemwiseError):
    """Shared memory could not be created or used (for example /dev/shm is too small)."""


class SharedMemoryExhausted(SharedMemoryError):
    """The shared-memory byte cap is reached and no slot was released in time."""


class BufferPoolExhausted(MemwiseError, TimeoutError):
    """Every buffer of a BufferPool stayed leased for the whole ``timeout`` of ``acquire``."""


class MemoryBudgetExceeded(MemwiseError):
    """A task or reservation waited longer than ``max_wait`` for room in a MemoryBudget."""


class InsufficientMemory(MemwiseError):
    """A configuration would need more memory than the machine has available.

    Raised at start-up, before any work is accepted; the message gives the measured need, what
    is available and the largest worker count that fits (``suggested``).
    """

    def __init__(self, message: str, suggested: int = 0) -> None:
        super().__init__(message, suggested)
        self.suggested = suggested

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidAudio(MemwiseError, ValueError):
    """Audio that cannot be recognized as sent: not a WAV file, wrong sample rate, channels or
    sample format, a truncated frame, or more than the server accepts. Nothing was queued."""


class TranscriptionFailed(MemwiseError):
    """A file's transcription was abandoned (its worker died mid-file, or it was cancelled);
    the other files are unaffected."""


class ProtocolError(MemwiseError, ValueError):
    """A message on a network API broke its protocol: a malformed frame, an unknown message
    type or task id, a task id already in use. The message says what to send instead; the
    connection and every other task are unaffected."""


class DataError(MemwiseError):
    """Base class of the errors of ``memwise.data`` (plugins, lineage, storage)."""


class PluginError(DataError, TypeError):
    """A plugin is declared wrongly, failed to load, or broke its own contract (dtype, time)."""


class DependencyError(DataError, LookupError):
    """Nothing provides a dependency, a version constraint is unmet, or dependencies cycle."""


class DataNotFound(DataError, LookupError):
    """The data asked for is in no storage, and the caller asked not to compute it."""


class ReentrantComputation(DataError, RuntimeError):
    """This process is already computing the same (run, data name) and was asked to again."""


class LockTimeout(DataError, TimeoutError):
    """Another process held a data key's lock longer than ``lock_timeout`` seconds."""


class ServerConfigError(MemwiseError, ValueError):
    """The server cannot start as configured (e.g. a non-loopback bind without a token)."""
