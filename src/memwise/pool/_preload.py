"""Imported by the forkserver at its start: the application's main script, once.

A worker needs the parent's ``__main__`` to unpickle functions defined there, and imports it
again in every worker unless the forkserver already holds it. CPython means to preload it
(``'__main__'`` is in the default preload list), but 3.11's forkserver drops the script's path
on the way and never does; a worker then pays for the script's imports at every start, which
makes recycling workers slow. The parent passes the path in the environment instead.

If importing the script fails (typically: it creates a pool at its top level, without
``if __name__ == "__main__":``), the failure is kept for every worker to report at its READY
handshake, and a stand-in ``__main__`` stops multiprocessing from running the script again in
each worker. When the pool's process is gone, the forkserver (which outlives its workers)
unlinks the shared memory that process left behind, however it died.
"""

import atexit
import os
import sys
import types

from memwise import _wire
from memwise.pool import context
from memwise.shared import Owner, owner_of, sweep_when_dead


def _sweep_after(owner: Owner, server_pid: int) -> None:
    if os.getpid() == server_pid:  # not in a worker forked from the server
        sweep_when_dead(owner)


atexit.register(_sweep_after, owner_of(os.getppid()), os.getpid())

_path = os.environ.get("MEMWISE_FORKSERVER_MAIN")
if _path:
    from multiprocessing import process, spawn

    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    context.importing_main = True
    try:
        spawn.import_main_path(_path)
    except BaseException as exc:  # reported by every worker instead
        context.main_failure = _wire.dump_exception(exc)
        stand_in = types.ModuleType("__mp_main__")
        stand_in.__file__ = _path
        sys.modules["__main__"] = sys.modules["__mp_main__"] = stand_in
    finally:
        context.importing_main = False
        del process.current_process()._inheriting  # type: ignore[attr-defined]
