"""What a pool reports about itself: statistics, leaks, and where a slot was taken."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeClassStats:
    """Slots of one size class: ``slots`` segments of ``size`` bytes, ``in_use`` of them held."""

    size: int
    slots: int
    in_use: int


@dataclass(frozen=True)
class SlotStats:
    """A snapshot of a SlotPool.

    ``bytes`` counts every segment the pool owns (free ones stay mapped for reuse); ``cap`` bounds
    it. ``created``/``reused`` tell how often an allocation paid for a fresh segment; ``waits``
    how often one had to wait for the cap.
    """

    slots: int
    bytes: int
    in_use: int
    in_use_bytes: int
    cap: int
    created: int
    reused: int
    adopted: int
    evicted: int
    waits: int
    classes: tuple[SizeClassStats, ...]


@dataclass(frozen=True)
class SlotLeak:
    """A slot still held: who took it (``site``), for how long, and which processes borrow it."""

    name: str
    size: int
    nbytes: int
    site: str
    age: float
    borrowers: tuple[int, ...]


def caller_site() -> str:
    """``file:line in function`` of the first caller outside memwise (cheap: no traceback)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("memwise."):
        frame = frame.f_back
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
