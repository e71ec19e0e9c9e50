"""Chunks: a piece of one data product covering a time range, and how chunks combine.

Every data product is a structured numpy array with ``time`` and ``endtime`` fields (int64,
nanoseconds), sorted by ``time``. A chunk carries its range ``[start, end)``: every item lies
inside it, and consecutive chunks of a product touch (one's ``end`` is the next's ``start``),
so a stream of chunks covers the run without gaps or overlaps.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import InitVar, dataclass
from typing import Literal

import numpy as np

from memwise.errors import PluginError

__all__ = ["Chunk", "check_dtype", "merge_sorted", "rechunk"]

TIME_FIELDS = ("time", "endtime")


def check_dtype(dtype: np.dtype, what: str) -> np.dtype:
    """``dtype`` as a numpy dtype, if it is structured with int64 ``time`` and ``endtime``."""
    dtype = np.dtype(dtype)
    names = dtype.names or ()
    for field in TIME_FIELDS:
        if field not in names or dtype[field] != np.int64:
            raise PluginError(
                f"{what}: dtype {dtype} needs an int64 {field!r} field (nanoseconds); add "
                "('time', np.int64) and ('endtime', np.int64) to it"
            )
    return dtype


@dataclass(frozen=True)
class Chunk:
    """Items of one data product within ``[start, end)`` nanoseconds, sorted by time."""

    data: np.ndarray
    start: int
    end: int
    # False skips the range check, for chunks read back from storage (checked when written).
    check: InitVar[bool] = True

    def __post_init__(self, check: bool) -> None:
        if self.end < self.start:
            raise ValueError(f"chunk ends ({self.end}) before it starts ({self.start})")
        if check and len(self.data):
            first = int(self.data["time"][0])
            last = int(self.data["endtime"].max())
            if first < self.start or last > self.end:
                raise PluginError(
                    f"chunk [{self.start}, {self.end}) holds items from {first} to {last}: "
                    "every item must lie inside its chunk's time range"
                )

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __len__(self) -> int:
        return len(self.data)

    @classmethod
    def concatenate(cls, chunks: Sequence[Chunk]) -> Chunk:
        """One chunk from touching chunks (each starts where the previous ends)."""
        if not chunks:
            raise ValueError("no chunks to concatenate")
        for before, after in itertools.pairwise(chunks):
            if before.end != after.start:
                raise ValueError(
                    f"chunks do not touch: one ends at {before.end}, the next starts at "
                    f"{after.start}"
                )
        if len(chunks) == 1:
            return chunks[0]
        data = np.concatenate([c.data for c in chunks])
        return cls(data, chunks[0].start, chunks[-1].end)

    def split(self, at: int) -> tuple[Chunk, Chunk]:
        """Two chunks ``[start, at)`` and ``[at, end)``; no item may straddle ``at``."""
        index = int(np.searchsorted(self.data["time"], at, side="left"))
        head, tail = self.data[:index], self.data[index:]
        return Chunk(head, self.start, at), Chunk(tail, at, self.end)


def rechunk(chunks: Iterable[Chunk], target_bytes: int) -> Iterator[Chunk]:
    """Re-cut a stream of touching chunks into chunks of about ``target_bytes``.

    Small chunks are joined until they reach the target; a large chunk is cut where no item
    straddles the cut (an item's ``endtime`` never passes the next item's ``time``), so a
    cut never splits an item. Memory held: about one target's worth plus one input chunk.
    """
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    pending: list[Chunk] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += chunk.nbytes
        if held < target_bytes:
            continue
        joined = Chunk.concatenate(pending)
        pending, held = [], 0
        for piece in _cut(joined, target_bytes):
            if piece.nbytes >= target_bytes:
                yield piece
            else:  # the remainder waits for more input
                pending, held = [piece], piece.nbytes
    if pending:
        yield Chunk.concatenate(pending)


def _cut(chunk: Chunk, target_bytes: int) -> Iterator[Chunk]:
    """``chunk`` cut at safe points into pieces of at least ``target_bytes`` (but the last)."""
    data = chunk.data
    per_item = max(1, data.dtype.itemsize)
    step = max(1, target_bytes // per_item)
    if len(data) <= step:
        yield chunk
        return
    # A cut before item i is safe when no earlier item ends after item i starts.
    reach = np.maximum.accumulate(data["endtime"])
    start, begin = chunk.start, 0
    index = step
    while index < len(data):
        safe = np.flatnonzero(reach[index - 1 : -1] <= data["time"][index:])
        if not len(safe):
            break
        cut = index + int(safe[0])
        at = int(data["time"][cut])
        yield Chunk(data[begin:cut], start, at)
        start, begin = at, cut
        index = cut + step
    yield Chunk(data[begin:], start, chunk.end)


def merge_sorted(arrays: Sequence[np.ndarray], field: str = "time") -> np.ndarray:
    """Merge arrays each sorted by ``field`` into one sorted array, in O(n log k).

    Ties keep the order of ``arrays`` and, within one array, the order of its items: the
    result equals a stable sort of the concatenation. The merge moves runs, not items: the
    array with the smallest head gives every item up to the next array's head at once, found
    by binary search, so interleaved inputs cost O(n log k) and blocky ones far less.
    """
    if not arrays:
        raise ValueError("merge_sorted needs at least one array")
    dtype = arrays[0].dtype
    if any(a.dtype != dtype for a in arrays):
        raise ValueError("merge_sorted needs arrays of one dtype")
    arrays = [a for a in arrays if len(a)]
    keys = [a[field] for a in arrays]
    heap = [(int(k[0]), i, 0) for i, k in enumerate(keys)]
    heapq.heapify(heap)
    out = np.empty(sum(len(a) for a in arrays), dtype)
    filled = 0
    while heap:
        _, i, pos = heapq.heappop(heap)
        key = keys[i]
        if heap:
            bound, j, _ = heap[0]
            # Equal keys of a later array wait; those of an earlier one went first already.
            side: Literal["left", "right"] = "right" if i < j else "left"
            stop = max(pos + 1, int(np.searchsorted(key, bound, side=side)))
        else:
            stop = len(key)
        run = stop - pos
        out[filled : filled + run] = arrays[i][pos:stop]
        filled += run
        if stop < len(key):
            heapq.heappush(heap, (int(key[stop]), i, stop))
    return out
