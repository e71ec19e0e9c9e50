"""Choosing how worker processes are started.

forkserver on Linux: a fork of a small, clean server process that has memwise's worker module
preloaded starts in milliseconds and inherits no threads or locks from the application (which
plain ``fork`` does, and which deadlocks). spawn elsewhere, where forkserver does not exist or
is not safe (macOS system frameworks).
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext

_PRELOAD = ["memwise.pool.worker"]


def default_start_method() -> str:
    if sys.platform.startswith("linux"):
        return "forkserver"
    return "spawn"


def get_context(start_method: str | None) -> BaseContext:
    """The multiprocessing context for ``start_method`` (None: the platform default)."""
    method = start_method or default_start_method()
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Only takes effect if the (process-wide) forkserver has not started yet.
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx
