"""How a local pool was configured: what its supervisor and every part of it read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memwise import _oob
from memwise.budget import MemoryBudget
from memwise.pool.policies import Recycle


@dataclass(frozen=True)
class PoolConfig:
    max_workers: int
    min_workers: int
    init_payload: bytes | None
    # initargs only a starting process may receive (multiprocessing queues, locks, events):
    # handed to each worker as multiprocessing starts it, as ProcessPoolExecutor does.
    start_initargs: tuple[Any, ...] | None
    init_timeout: float
    retries: int
    start_method: str | None
    recycle: Recycle = field(default_factory=Recycle)
    max_restarts: int | None = None
    trim: bool = False
    budget: MemoryBudget | None = None
    shm_threshold: int = _oob.DEFAULT_THRESHOLD
    # Where every deadline is computed from (timeouts, idle, stealing, storms): injectable so
    # that queue, dispatch and death handling can be tested without waiting.
    clock: Callable[[], float] = time.monotonic
