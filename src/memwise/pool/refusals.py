"""Why a pool refuses work, in one message per situation, for local and Ray-backed pools."""

from __future__ import annotations

from memwise.errors import BrokenPool, ClosedError


def refuse_tasks_unless_open(broken: BaseException | None, closing: bool) -> None:
    """Raise if a pool that is ``broken`` or ``closing`` is given a task."""
    if broken is not None:
        raise BrokenPool(f"the pool is broken and accepts no tasks: {broken}") from broken
    if closing:
        raise ClosedError("cannot schedule new futures after shutdown; create a new pool")


def refuse_resize_unless_open(broken: BaseException | None, closing: bool) -> None:
    """Raise if a pool that is ``broken`` or ``closing`` is resized."""
    if broken is not None:
        raise BrokenPool(f"the pool is broken: {broken}") from broken
    if closing:
        raise ClosedError("cannot resize a pool that is shut down; create a new pool")
