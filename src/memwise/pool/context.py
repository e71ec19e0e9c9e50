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

from memwise.errors import MissingMainGuard

# Imported once in the server, inherited by every worker: the application's own main module
# (which each worker would otherwise import again, as spawn does), numpy, which nearly every
# task of an array-heavy application imports, and the multiprocessing modules that unpickling
# a worker's arguments (its ledger's shared values and lock) imports: measured, they were a
# third of a fresh worker's CPU time before its first task. A recycled worker then starts in
# milliseconds.
_PRELOAD = [
    "memwise.pool._preload",
    "memwise.pool.worker",
    "numpy",
    "multiprocessing.sharedctypes",
    "multiprocessing.synchronize",
    "multiprocessing.popen_forkserver",
]
_MAIN_HINT = "MEMWISE_FORKSERVER_MAIN"
# How a spawned worker that ran into a pool while importing the main script exits, so that the
# parent can say why (nothing of memwise's runs in it before that import).
EXIT_MISSING_MAIN_GUARD = 72

# Set in the forkserver while it imports the main script (see memwise.pool._preload), and
# what that import raised, pickled: every worker forked from it reports that failure.
importing_main = False
main_failure: bytes | None = None


def default_start_method() -> str:
    if sys.platform.startswith("linux"):
        return "forkserver"
    return "spawn"


def get_context(start_method: str | None) -> BaseContext:
    """The multiprocessing context for ``start_method`` (None: the platform default)."""
    _check_not_importing_main()
    method = start_method or default_start_method()
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Only takes effect if the (process-wide) forkserver has not started yet.
        ctx.set_forkserver_preload(_PRELOAD)
        main_path = main_script()
        if main_path is not None:
            os.environ[_MAIN_HINT] = main_path
    return ctx


def forget_main_hint() -> None:
    """Once a worker has started, the forkserver has read the hint; other programs must not."""
    os.environ.pop(_MAIN_HINT, None)


def main_script() -> str | None:
    """The path multiprocessing would give workers for ``__main__`` (a script), if any."""
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return None
    path = getattr(main, "__file__", None)
    return None if path is None else os.path.normpath(os.path.abspath(path))


def missing_guard_message(path: str | None) -> str:
    script = f"the main script {path}" if path else "the main module"
    return (
        f"a pool was created while a new worker process was importing {script}: every worker "
        "started by forkserver or spawn imports it again, so code at its top level runs in "
        'each of them. Put the code that creates pools under `if __name__ == "__main__":`'
    )


def _check_not_importing_main() -> None:
    """Refuse to start workers from a process that is itself being started.

    multiprocessing marks a new process as inheriting while it imports the parent's main
    script; a pool created then would start workers that import the script again, without
    end. The forkserver's own import (``importing_main``) raises, to be reported by every
    worker; a spawned worker has no channel yet, so it says why on stderr and exits with a
    code the parent recognizes.
    """
    if not getattr(multiprocessing.process.current_process(), "_inheriting", False):
        return
    importing = sys.modules.get("__mp_main__")  # the module multiprocessing is running
    message = missing_guard_message(getattr(importing, "__file__", None))
    if importing_main:
        raise MissingMainGuard(message)
    sys.stderr.write(f"memwise: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_MISSING_MAIN_GUARD)
