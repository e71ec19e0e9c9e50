"""Choosing how worker processes are started.

forkserver on Linux: a fork of a small, clean server process that has memwise's worker module
preloaded starts in milliseconds and inherits no threads or locks from the application (which
plain ``fork`` does, and which deadlocks). spawn elsewhere, where forkserver does not exist or
is not safe (macOS system frameworks).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext

# Imported once in the server, inherited by every worker: the application's own main module
# (which each worker would otherwise import again, as spawn does) and numpy, which nearly every
# task of an array-heavy application imports. A recycled worker then starts in milliseconds.
_PRELOAD = ["memwise.pool._preload", "memwise.pool.worker", "numpy"]
_MAIN_HINT = "MEMWISE_FORKSERVER_MAIN"


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
        main_path = _main_script()
        if main_path is not None:
            os.environ[_MAIN_HINT] = main_path
    return ctx


def forget_main_hint() -> None:
    """Once a worker has started, the forkserver has read the hint; other programs must not."""
    os.environ.pop(_MAIN_HINT, None)


def _main_script() -> str | None:
    """The path multiprocessing would give workers for ``__main__`` (a script), if any."""
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return None
    path = getattr(main, "__file__", None)
    return None if path is None else os.path.normpath(os.path.abspath(path))
