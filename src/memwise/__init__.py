"""memwise: memory-bounded, crash-isolated, zero-copy multi-process work on array-heavy data.

Names are re-exported lazily (PEP 562) so that ``import memwise`` stays cheap: nothing heavy
(numpy, psutil, rich, ...) is imported until it is used.
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: importing typing costs more than the rest of
# `import memwise` together. Type checkers treat any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS = {
    "WorkerPool": "memwise.pool.api",
    "Pipeline": "memwise.pipeline.api",
    "BufferPool": "memwise.buffers",
    "Recycle": "memwise.pool.policies",
    "MemoryBudget": "memwise.budget",
    "MemoryBudgetExceeded": "memwise.errors",
    "Actor": "memwise.actors",
    "Sessions": "memwise.sessions",
    "spawn": "memwise.actors",
    "BrokenPool": "memwise.errors",
    "ClosedError": "memwise.errors",
    "MemwiseError": "memwise.errors",
    "RemoteError": "memwise.errors",
    "SerializationError": "memwise.errors",
    "SharedMemoryError": "memwise.errors",
    "TaskTimeout": "memwise.errors",
    "WorkerCrashed": "memwise.errors",
    "WorkerInitError": "memwise.errors",
}

__all__ = [
    "Actor",
    "BrokenPool",
    "BufferPool",
    "ClosedError",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "MemwiseError",
    "Pipeline",
    "Recycle",
    "RemoteError",
    "SerializationError",
    "Sessions",
    "SharedMemoryError",
    "TaskTimeout",
    "WorkerCrashed",
    "WorkerInitError",
    "WorkerPool",
    "spawn",
]

if TYPE_CHECKING:
    from typing import Any

    from memwise.actors import Actor, spawn
    from memwise.budget import MemoryBudget
    from memwise.buffers import BufferPool
    from memwise.errors import (
        BrokenPool,
        ClosedError,
        MemoryBudgetExceeded,
        MemwiseError,
        RemoteError,
        SerializationError,
        SharedMemoryError,
        TaskTimeout,
        WorkerCrashed,
        WorkerInitError,
    )
    from memwise.pipeline.api import Pipeline
    from memwise.pool.api import WorkerPool
    from memwise.pool.policies import Recycle
    from memwise.sessions import Sessions


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'memwise' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
