"""A task module that says when its worker imported it (for the spare-import test).

Imported by a worker only for a task of it, or by a spare that was told to import it.
"""

from __future__ import annotations

import os
import time

IMPORTED = time.monotonic()


def stamp(seconds: float) -> tuple[int, float]:
    """Sleep ``seconds``; return this worker's pid and how long before this task it imported
    this module."""
    started = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), started - IMPORTED
