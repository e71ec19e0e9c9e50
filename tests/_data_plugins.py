"""Small plugins for the data tests, importable by worker processes and subprocesses."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from memwise.data import Plugin, untracked

SPAN = 1000  # ns per chunk
TICK_DTYPE = np.dtype([("time", np.int64), ("endtime", np.int64), ("value", np.int64)])
SUM_DTYPE = np.dtype([("time", np.int64), ("endtime", np.int64), ("total", np.int64)])


def note(path: str, text: str) -> None:
    """Append one line to ``path`` (O_APPEND: lines from racing processes never mix)."""
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{text}\n".encode())
        finally:
            os.close(fd)


def ticks(start: int, n: int) -> np.ndarray:
    out = np.zeros(n, TICK_DTYPE)
    out["time"] = start + np.arange(n) * (SPAN // max(n, 1))
    out["endtime"] = out["time"] + 1
    out["value"] = out["time"] // 7
    return out


class Ticks(Plugin):
    """A source: ``chunks`` chunks of ``per_chunk`` items; optionally slow, noting each chunk."""

    provides = "ticks"
    version = "1.0.0"
    dtype = TICK_DTYPE

    class Config(BaseModel):
        chunks: int = 4
        per_chunk: int = 50
        log: str = untracked("")  # a file each computed chunk is noted in
        chunk_delay: float = untracked(0.0)
        stall_at: int = untracked(-1)  # chunk index at which to note "stalled" and sleep

    def setup(self) -> None:
        note(self.config.log, f"setup {os.getpid()}")

    def teardown(self) -> None:
        note(self.config.log, f"teardown {os.getpid()}")

    def chunk_ranges(self, run_id: str) -> list[tuple[int, int]]:
        return [(i * SPAN, (i + 1) * SPAN) for i in range(self.config.chunks)]

    def compute(self, **inputs: Any) -> np.ndarray:
        index = inputs["start"] // SPAN
        note(self.config.log, f"ticks {index} {os.getpid()}")
        if index == self.config.stall_at:
            note(self.config.log, "stalled")
            time.sleep(3600)
        time.sleep(self.config.chunk_delay)
        return ticks(inputs["start"], self.config.per_chunk)


class Sums(Plugin):
    """A running-sum-free per-chunk transform, with a tracked scale."""

    provides = "sums"
    depends_on = ("ticks>=1.0,<2",)
    version = "1.0.0"
    dtype = SUM_DTYPE

    class Config(BaseModel):
        scale: int = 1

    def compute(self, **inputs: Any) -> np.ndarray:
        t = inputs["ticks"]
        out = np.zeros(len(t), SUM_DTYPE)
        out["time"], out["endtime"] = t["time"], t["endtime"]
        out["total"] = t["value"] * self.config.scale
        return out


class Split(Plugin):
    """Two outputs: even and odd ticks."""

    provides = ("evens", "odds")
    depends_on = ("ticks",)
    version = "1.0.0"
    dtype = {"evens": TICK_DTYPE, "odds": TICK_DTYPE}

    def compute(self, **inputs: Any) -> dict[str, np.ndarray]:
        t = inputs["ticks"]
        even = t["value"] % 2 == 0
        return {"evens": t[even], "odds": t[~even]}


class Both(Plugin):
    """Depends on two products (both outputs of Split)."""

    provides = "both"
    depends_on = ("evens", "odds")
    version = "1.0.0"
    dtype = TICK_DTYPE

    def compute(self, **inputs: Any) -> np.ndarray:
        merged = np.concatenate([inputs["evens"], inputs["odds"]])
        return merged[np.argsort(merged["time"], kind="stable")]


def digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=8).hexdigest()


def race_main(root: str, backend: str, log: str, out: str) -> None:
    """What each racing process runs: get ``sums`` and note a digest of what it read."""
    from memwise.data import Context, DirectoryStorage, SQLiteStorage

    storage = DirectoryStorage(root) if backend == "directory" else SQLiteStorage(root)
    ctx = Context(
        storage,
        plugins=[Ticks, Sums],
        workers=0,
        config={"log": log, "chunk_delay": 0.05, "chunks": 6},
    )
    note(out, digest(ctx.get_array("race", "sums")))
