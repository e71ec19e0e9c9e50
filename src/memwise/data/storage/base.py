"""What every storage backend offers, and the parts they share (metadata, dtypes, key locks).

Write protocol, the same for every backend: take the key's inter-process lock; ``clean`` what
a writer killed earlier left behind; stream chunks into a ``writer`` (staged where no reader
looks); ``finalize`` makes the whole product visible in one atomic step, or ``abort`` drops
it. A reader therefore sees a product complete or not at all, whatever happens to a writer.
The outputs of one computation (a multi-output plugin's, and those of its chain) go through
``Storage.finalize_all``: all of them become visible, or, if any step fails, none does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from memwise.data.chunk import Chunk
from memwise.data.lineage import DataKey
from memwise.errors import LockTimeout

__all__ = ["KeyLock", "Storage", "Writer", "dtype_from_json", "dtype_to_json", "writers_of"]

W = TypeVar("W")


@runtime_checkable
class Writer(Protocol):
    """A product being saved: chunks in time order, then finalize (or abort)."""

    def write(self, chunk: Chunk) -> None: ...

    def finalize(self) -> None:
        """Make the product visible to readers, all at once."""

    def abort(self) -> None:
        """Drop everything written so far; nothing becomes visible."""


@runtime_checkable
class Storage(Protocol):
    """A place data products live, addressed by :class:`DataKey`."""

    def exists(self, key: DataKey) -> bool: ...

    def metadata(self, key: DataKey) -> dict[str, Any]: ...

    def load(self, key: DataKey) -> Iterator[Chunk]: ...

    def load_array(self, key: DataKey) -> np.ndarray:
        """The whole product as one array (read-only; a memory map where the backend can)."""

    def writer(self, key: DataKey, metadata: dict[str, Any]) -> Writer:
        """Streaming save of ``key``; call under :meth:`lock` after :meth:`clean`."""

    def finalize_all(self, writers: Sequence[Writer]) -> None:
        """Finalize ``writers`` (made by this storage) together: all their products become
        visible, or, if any step fails, none stays visible, every writer is aborted and the
        error is raised. A lone writer's ``finalize`` is ``finalize_all([writer])``."""

    def save(self, key: DataKey, chunks: list[Chunk], metadata: dict[str, Any]) -> None:
        """Save a whole product at once (lock, clean, write, finalize)."""

    def delete(self, key: DataKey) -> None: ...

    def keys(self) -> list[DataKey]: ...

    def size(self, key: DataKey) -> int:
        """Bytes of data stored under ``key``."""

    def lock(self, key: DataKey, timeout: float) -> KeyLock: ...

    def clean(self, key: DataKey) -> None:
        """Remove what dead writers of ``key`` left behind; only under the key's lock."""


def writers_of(storage: Storage, writers: Sequence[Writer], kind: type[W]) -> list[W]:
    """``writers``, checked to be ``kind`` writers that ``storage`` made (a storage can only
    finalize its own)."""
    own: list[W] = []
    for writer in writers:
        if not isinstance(writer, kind) or getattr(writer, "storage", None) is not storage:
            raise TypeError(f"{writer!r} is not a writer of {storage!r}")
        own.append(writer)
    return own


def save_whole(storage: Storage, key: DataKey, chunks: list[Chunk], meta: dict[str, Any]) -> None:
    """:meth:`Storage.save` for every backend: the write protocol in one call."""
    with storage.lock(key, timeout=600.0):
        storage.clean(key)
        writer = storage.writer(key, meta)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        writer.finalize()


class KeyLock:
    """An exclusive inter-process lock on one data key (``flock`` through ``filelock``).

    The kernel releases it when its holder dies, even by SIGKILL, so a crashed writer never
    blocks the key. Waiting polls with exponential backoff (1 ms doubling up to 100 ms) and
    gives up after ``timeout`` seconds with :class:`LockTimeout`.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        import filelock

        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._timeout = timeout
        self._lock = filelock.FileLock(str(path), thread_local=False)

    def acquire(self) -> None:
        import filelock

        deadline = time.monotonic() + self._timeout
        delay = 0.001
        while True:
            try:
                self._lock.acquire(timeout=0)
                return
            except filelock.Timeout:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeout(
                        f"waited {self._timeout:g} s for the lock {self._path}: another process "
                        "is computing this data; wait longer (lock_timeout=) or check that "
                        "process"
                    ) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.1)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> KeyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def dtype_to_json(dtype: np.dtype) -> Any:
    """A JSON-ready description of a (structured) dtype."""
    return np.lib.format.dtype_to_descr(dtype)


def dtype_from_json(descr: Any) -> np.dtype:
    """The dtype :func:`dtype_to_json` described (its tuples came back as lists)."""

    def fields(value: Any) -> Any:
        if isinstance(value, str):
            return value
        return [
            (f[0], fields(f[1]), *([tuple(f[2])] if len(f) > 2 else []))
            if isinstance(f, list)
            else f
            for f in value
        ]

    return np.dtype(fields(descr))


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
