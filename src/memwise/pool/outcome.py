"""What a worker's ``Done`` means for its task: a value, or an error (any thread).

The supervisor reads most ``Done`` messages; a calling thread reads those of the call path
(see :mod:`memwise.pool.inbox`). Both turn them into an outcome here, the same way.
"""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import Any

from memwise import _oob, _wire
from memwise.errors import SerializationError
from memwise.pool._protocol import OK, Done
from memwise.pool.task import Task


def outcome(done: Done, task: Task) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)``; adopts the result's shared-memory slots."""
    try:
        if done.status == OK:
            buffers = _oob.adopted(done.gifts)
            return True, _wire.loads(done.payload, lambda: f"the result of {task}", buffers)
        return False, _wire.load_exception(done.payload)
    except (SerializationError, OSError, ValueError) as exc:
        # Unpicklable, or its result slots could not be mapped: this task fails alone.
        return False, exc
    except Exception as exc:  # its exception's class cannot be rebuilt here
        error = SerializationError(f"could not unpickle the error raised by {task}: {exc!r}")
        error.__cause__ = exc
        return False, error


def settle(future: Future[Any], ok: bool, result: Any) -> None:
    """Complete ``future``, unless the pool failed it first (it broke meanwhile)."""
    try:
        if ok:
            future.set_result(result)
        else:
            future.set_exception(result)
    except InvalidStateError:
        pass
