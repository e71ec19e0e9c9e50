"""A directory of data products: one folder per key, memory-mapped on load.

Layout under ``root``::

    <run>-<name>-<lineage>/data.bin        every chunk's bytes, one after the other
    <run>-<name>-<lineage>/metadata.json   dtype, lineage, each chunk's range and offset
    .staging/<key>.<pid>.<random>/          products being written
    .locks/<key>.lock                       the key's inter-process lock

A product is written into its staging folder through a buffered writer (small chunks are
gathered into large writes; big arrays go to the file directly, without a copy),
then renamed into place: the folder appears complete or not at all, whenever the writer
dies. That holds against process crashes with data in the page cache; ``fsync=True`` also
flushes files and directories to disk before and after the rename, against power loss.
Chunks live in one file rather than a file each: fewer files, and loads map the file once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from memwise.data.chunk import Chunk
from memwise.data.lineage import DataKey
from memwise.data.storage.base import (
    KeyLock,
    Writer,
    dtype_from_json,
    fsync_dir,
    save_whole,
    writers_of,
)
from memwise.errors import DataNotFound

__all__ = ["BufferedArrayWriter", "DirectoryStorage"]

DATA = "data.bin"
METADATA = "metadata.json"
STAGING = ".staging"
LOCKS = ".locks"
BUFFER_BYTES = 8 * 1024 * 1024


class BufferedArrayWriter:
    """Writes arrays to a raw file: small ones gathered in a buffer, big ones straight through.

    Arrays at least as big as the buffer bypass it (after a flush, to keep the order), so they
    are written from their own memory with no copy; small ones cost one memcpy and share one
    system call per buffer-full.
    """

    def __init__(self, file: BinaryIO, size: int = BUFFER_BYTES) -> None:
        self._file = file
        self._buffer = bytearray(size)
        self._used = 0
        self.written = 0

    def write(self, array: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(array)).cast("B")  # type: ignore[arg-type]
        if self._used + len(view) > len(self._buffer):
            self.flush()
        if len(view) >= len(self._buffer):
            self._write_all(view)
        else:
            self._buffer[self._used : self._used + len(view)] = view
            self._used += len(view)
        self.written += len(view)

    def flush(self) -> None:
        if self._used:
            self._write_all(memoryview(self._buffer)[: self._used])
            self._used = 0

    def _write_all(self, view: memoryview) -> None:
        while view:
            done = self._file.write(view)
            view = view[done or 0 :]


class _DirectoryWriter:
    def __init__(self, storage: DirectoryStorage, key: DataKey, metadata: dict[str, Any]) -> None:
        self.storage = storage
        self.key = key
        self._metadata = metadata
        self._chunks: list[dict[str, int]] = []
        self.staging = storage.root / STAGING / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.staging.mkdir(parents=True)
        self._file = open(self.staging / DATA, "wb", buffering=0)  # noqa: SIM115
        self._out = BufferedArrayWriter(self._file)

    def write(self, chunk: Chunk) -> None:
        offset = self._out.written
        self._out.write(chunk.data)
        self._chunks.append(
            {"start": chunk.start, "end": chunk.end, "n": len(chunk), "offset": offset}
        )

    def finalize(self) -> None:
        self.storage.finalize_all([self])

    def stage(self) -> None:
        """Complete the staged folder (data flushed, metadata written); still invisible."""
        self._out.flush()
        if self.storage.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        metadata = {
            **self._metadata,
            "key": str(self.key),
            "chunks": self._chunks,
            "nbytes": self._out.written,
        }
        with open(self.staging / METADATA, "w") as f:
            json.dump(metadata, f)
            if self.storage.fsync:
                f.flush()
                os.fsync(f.fileno())
        if self.storage.fsync:
            fsync_dir(self.staging)

    def publish(self) -> None:
        """Rename the staged folder into place: the one step that makes it visible."""
        os.rename(self.staging, self.storage.path(self.key))
        if self.storage.fsync:
            fsync_dir(self.storage.root)

    def abort(self) -> None:
        self._file.close()  # closing twice is harmless: abort may follow finalize_all's
        shutil.rmtree(self.staging, ignore_errors=True)


class DirectoryStorage:
    """Data products in a directory; see the module documentation for the layout."""

    def __init__(self, root: str | Path, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"DirectoryStorage({str(self.root)!r})"

    def path(self, key: DataKey) -> Path:
        return self.root / str(key)

    def exists(self, key: DataKey) -> bool:
        return (self.path(key) / METADATA).is_file()

    def metadata(self, key: DataKey) -> dict[str, Any]:
        try:
            with open(self.path(key) / METADATA) as f:
                metadata: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise DataNotFound(f"{key} is not stored in {self.root}") from None
        return metadata

    def load(self, key: DataKey) -> Iterator[Chunk]:
        """The chunks of ``key`` as read-only views of one memory map of its data file."""
        metadata = self.metadata(key)
        dtype = dtype_from_json(metadata["dtype"])
        raw = None
        if metadata["nbytes"]:  # np.memmap refuses an empty file
            raw = np.memmap(self.path(key) / DATA, dtype=np.uint8, mode="r")
        for entry in metadata["chunks"]:
            if raw is None or not entry["n"]:
                data = np.zeros(0, dtype)
            else:
                size = entry["n"] * dtype.itemsize
                data = raw[entry["offset"] : entry["offset"] + size].view(dtype)
            yield Chunk(data, entry["start"], entry["end"], check=False)

    def load_array(self, key: DataKey) -> np.ndarray:
        """The whole product with no copy: chunks lie end to end in one file, so one map
        covers them all; pages are read when first touched."""
        metadata = self.metadata(key)
        dtype = dtype_from_json(metadata["dtype"])
        if not metadata["nbytes"]:
            return np.zeros(0, dtype)
        data = np.memmap(self.path(key) / DATA, dtype=dtype, mode="r")
        return data.view(np.ndarray)

    def writer(self, key: DataKey, metadata: dict[str, Any]) -> _DirectoryWriter:
        return _DirectoryWriter(self, key, metadata)

    def finalize_all(self, writers: Sequence[Writer]) -> None:
        """Make the products of ``writers`` visible together: every folder is completed
        first, then each is renamed into place; if any step fails, the folders already
        renamed are deleted again and every writer is aborted, and the error is raised."""
        own = writers_of(self, writers, _DirectoryWriter)
        published: list[_DirectoryWriter] = []
        try:
            for writer in own:
                writer.stage()
            for writer in own:
                writer.publish()
                published.append(writer)
        except BaseException:
            for writer in published:
                with contextlib.suppress(DataNotFound):  # deleted meanwhile: already gone
                    self.delete(writer.key)
            for writer in own:
                writer.abort()
            raise

    def save(self, key: DataKey, chunks: list[Chunk], metadata: dict[str, Any]) -> None:
        save_whole(self, key, chunks, metadata)

    def delete(self, key: DataKey) -> None:
        """Remove ``key``: renamed out of sight first, so no reader sees half of it."""
        doomed = self.root / STAGING / f"{key}.deleted.{uuid.uuid4().hex[:8]}"
        doomed.parent.mkdir(exist_ok=True)
        try:
            os.rename(self.path(key), doomed)
        except FileNotFoundError:
            raise DataNotFound(f"{key} is not stored in {self.root}") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def keys(self) -> list[DataKey]:
        found = []
        for entry in self.root.iterdir():
            if not entry.name.startswith(".") and (entry / METADATA).is_file():
                found.append(DataKey.parse(entry.name))
        return sorted(found)

    def size(self, key: DataKey) -> int:
        return int(self.metadata(key)["nbytes"])

    def lock(self, key: DataKey, timeout: float) -> KeyLock:
        return KeyLock(self.root / LOCKS / f"{key}.lock", timeout)

    def clean(self, key: DataKey) -> None:
        staging = self.root / STAGING
        if staging.is_dir():
            for leftover in staging.glob(f"{key}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
