"""Imported by the forkserver at its start: the application's main script, once.

A worker needs the parent's ``__main__`` to unpickle functions defined there, and imports it
again in every worker unless the forkserver already holds it. CPython means to preload it
(``'__main__'`` is in the default preload list), but 3.11's forkserver drops the script's path
on the way and never does; a worker then pays for the script's imports at every start, which
makes recycling workers slow. The parent passes the path in the environment instead.
"""

import os

_path = os.environ.get("MEMWISE_FORKSERVER_MAIN")
if _path:
    from multiprocessing import process, spawn

    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.import_main_path(_path)
    except Exception:
        pass
    finally:
        del process.current_process()._inheriting  # type: ignore[attr-defined]
