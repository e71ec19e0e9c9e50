"""What a pool reports about itself: statistics, leaks, and where a slot was taken."""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memwise.shared._slot import Entry


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


def pool_stats(
    entries: Iterable[Entry], free: Collection[str], cap: int, counts: Mapping[str, int]
) -> SlotStats:
    """Statistics of a pool's ``entries``, of which the names in ``free`` are not in use."""
    classes: dict[int, list[int]] = {}
    total = in_use = in_use_bytes = 0
    for entry in entries:
        size = entry.segment.size
        tally = classes.setdefault(size, [0, 0])
        tally[0] += 1
        total += size
        if entry.segment.name not in free:
            tally[1] += 1
            in_use += 1
            in_use_bytes += size
    return SlotStats(
        slots=sum(tally[0] for tally in classes.values()),
        bytes=total,
        in_use=in_use,
        in_use_bytes=in_use_bytes,
        cap=cap,
        classes=tuple(SizeClassStats(size, *classes[size]) for size in sorted(classes)),
        **counts,
    )


def held_slots(entries: Iterable[Entry], free: Collection[str]) -> list[SlotLeak]:
    """The entries not in ``free``, oldest first, as leak reports."""
    now = time.monotonic()
    held = sorted(
        (entry for entry in entries if entry.segment.name not in free),
        key=lambda entry: entry.since,
    )
    return [
        SlotLeak(
            name=entry.segment.name,
            size=entry.segment.size,
            nbytes=entry.nbytes,
            site=entry.site,
            age=now - entry.since,
            borrowers=tuple(sorted(entry.borrows)),
        )
        for entry in held
    ]
