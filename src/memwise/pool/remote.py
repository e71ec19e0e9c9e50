"""Choosing a remote backend for ``WorkerPool(backend=...)``, and what it cannot do.

Backends are imported only when asked for, so that ``import memwise`` never imports Ray.
Options that only make sense for processes of this machine are refused with a clear error
rather than silently ignored.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from memwise.budget import MemoryBudget
from memwise.pool.backend import PoolBackend
from memwise.pool.policies import Recycle
from memwise.pool.remote_lanes import LaneConfig

BACKENDS = {"ray": ("memwise.ray", "RayBackend")}  # name -> (module, class)


def remote_backend(
    name: str,
    *,
    address: str | None,
    workers: int,
    min_workers: int,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    init_timeout: float,
    retries: int,
    recycle: Recycle,
    max_restarts: int | None,
    trim: bool,
    budget: MemoryBudget | None,
    start_method: str | None,
) -> PoolBackend:
    """The backend ``name``, started; ``ValueError`` for options it cannot honour."""
    if name not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}: choose 'local' or one of {sorted(BACKENDS)}"
            + ("" if name != "local" else " (address= needs backend='ray')")
        )
    refused = {
        "budget": budget is not None,
        "min_workers": min_workers != workers,
        "start_method": start_method is not None,
        "Recycle(idle=)": recycle.idle is not None,
        "Recycle(on_key_change=)": recycle.on_key_change,
        "Recycle(hard_memory=)": recycle.hard_memory is not None,
    }
    given = [option for option, set_ in refused.items() if set_]
    if given:
        raise ValueError(
            f"the {name} backend does not support {', '.join(given)}: these act on processes "
            "of this machine; see docs/ray.md for what holds on a cluster"
        )
    module, cls = BACKENDS[name]
    config = LaneConfig(workers, retries, recycle, max_restarts, init_timeout)
    backend: PoolBackend = getattr(importlib.import_module(module), cls)(
        config, address=address, initializer=initializer, initargs=initargs, trim=trim
    )
    return backend
