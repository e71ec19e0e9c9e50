"""Removing segments nobody will ever release: those of dead owners and dead creators."""

from __future__ import annotations

import time
from collections.abc import Collection

from memwise.shared import _segment
from memwise.shared._names import Owner, is_alive, list_segments, parse


def sweep_orphans() -> list[str]:
    """Unlink every memwise segment whose owner process is dead; return the names removed.

    Runs when a SlotPool starts, so a parent killed with SIGKILL leaves nothing behind after the
    next pool start. Linux only in practice: where shared memory cannot be listed (macOS) it does
    nothing and returns an empty list.
    """
    removed = []
    verdicts: dict[Owner, bool] = {}
    for name in list_segments() or ():
        parsed = parse(name)
        if parsed is None:
            continue
        alive = verdicts.get(parsed.owner)
        if alive is None:
            alive = verdicts[parsed.owner] = is_alive(parsed.owner)
        if not alive and _segment.unlink(name):
            removed.append(name)
    return removed


def sweep_when_dead(owner: Owner, wait: float = 2.0) -> list[str]:
    """Unlink ``owner``'s segments once it has died; called by processes that outlive it.

    A worker or forkserver sees its pool's process go (a pipe closes) a moment before the
    kernel marks it dead; it waits up to ``wait`` seconds for that, and leaves everything
    alone if the owner turns out to be alive.
    """
    deadline = time.monotonic() + wait
    while is_alive(owner):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.01)
    removed = []
    for name in list_segments() or ():
        parsed = parse(name)
        if parsed is not None and parsed.owner == owner and _segment.unlink(name):
            removed.append(name)
    return removed


def sweep_created_by(owner: Owner, creator: int, keep: Collection[str]) -> list[str]:
    """Unlink the segments ``creator`` made for ``owner``, except the names in ``keep``.

    The owner calls this once the creator (a worker) has exited, after reading everything the
    worker sent: segments the owner adopted are in ``keep``; the rest were never handed over.
    """
    removed = []
    for name in list_segments() or ():
        parsed = parse(name)
        if (
            parsed is not None
            and parsed.owner == owner
            and parsed.creator == creator
            and name not in keep
            and _segment.unlink(name)
        ):
            removed.append(name)
    return removed
