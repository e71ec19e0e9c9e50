"""Data products in one SQLite database (WAL mode: readers never block the writer).

Chunks are rows of ``chunks(key, idx, data)``; a product is written under a staging key
(``~<key>~<random>``) and made visible by one transaction that renames its rows and inserts
its ``products`` row, so readers see it complete or not at all. Rows a killed writer left
under a staging key are deleted by the next writer of that key. Key locks are files beside
the database (``<db>.locks/``), as for the directory backend.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memwise.data.chunk import Chunk
from memwise.data.lineage import DataKey
from memwise.data.storage.base import (
    KeyLock,
    Writer,
    dtype_from_json,
    save_whole,
    writers_of,
)
from memwise.errors import DataNotFound

__all__ = ["SQLiteStorage"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (key TEXT PRIMARY KEY, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    key TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (key, idx)
);
"""


class _SQLiteWriter:
    def __init__(self, storage: SQLiteStorage, key: DataKey, metadata: dict[str, Any]) -> None:
        self.storage = storage
        self.key = key
        self._metadata = metadata
        self._staging = f"{staging_prefix(key)}{uuid.uuid4().hex[:8]}"
        self._chunks: list[dict[str, int]] = []
        self._nbytes = 0

    def write(self, chunk: Chunk) -> None:
        data = np.ascontiguousarray(chunk.data)
        blob = memoryview(data).cast("B")  # type: ignore[arg-type]
        with self.storage.connection() as db:
            db.execute(
                "INSERT INTO chunks (key, idx, data) VALUES (?, ?, ?)",
                (self._staging, len(self._chunks), blob),
            )
        self._chunks.append({"start": chunk.start, "end": chunk.end, "n": len(chunk)})
        self._nbytes += data.nbytes

    def finalize(self) -> None:
        self.storage.finalize_all([self])

    def publish(self, db: sqlite3.Connection) -> None:
        """Rename the staged rows and record the product, in the caller's transaction."""
        metadata = {
            **self._metadata,
            "key": str(self.key),
            "chunks": self._chunks,
            "nbytes": self._nbytes,
        }
        db.execute("UPDATE chunks SET key = ? WHERE key = ?", (str(self.key), self._staging))
        db.execute(
            "INSERT INTO products (key, metadata) VALUES (?, ?)",
            (str(self.key), json.dumps(metadata)),
        )

    def abort(self) -> None:
        with self.storage.connection() as db:
            db.execute("DELETE FROM chunks WHERE key = ?", (self._staging,))


def staging_prefix(key: DataKey) -> str:
    return f"~{key}~"


class SQLiteStorage:
    """Data products in the SQLite database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connection() as db:
            db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r})"

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections belong to one thread and one
        process: a forked child opens its own)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=60.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's storage goes)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def exists(self, key: DataKey) -> bool:
        row = (
            self.connection()
            .execute("SELECT 1 FROM products WHERE key = ?", (str(key),))
            .fetchone()
        )
        return row is not None

    def metadata(self, key: DataKey) -> dict[str, Any]:
        row = (
            self.connection()
            .execute("SELECT metadata FROM products WHERE key = ?", (str(key),))
            .fetchone()
        )
        if row is None:
            raise DataNotFound(f"{key} is not stored in {self.path}")
        metadata: dict[str, Any] = json.loads(row[0])
        return metadata

    def load(self, key: DataKey) -> Iterator[Chunk]:
        metadata = self.metadata(key)
        dtype = dtype_from_json(metadata["dtype"])
        for idx, entry in enumerate(metadata["chunks"]):
            row = (
                self.connection()
                .execute("SELECT data FROM chunks WHERE key = ? AND idx = ?", (str(key), idx))
                .fetchone()
            )
            data = np.frombuffer(row[0], dtype) if entry["n"] else np.zeros(0, dtype)
            yield Chunk(data, entry["start"], entry["end"], check=False)

    def load_array(self, key: DataKey) -> np.ndarray:
        datas = [c.data for c in self.load(key)]
        if len(datas) == 1:
            return datas[0]
        whole = (
            np.concatenate(datas)
            if datas
            else np.zeros(0, dtype_from_json(self.metadata(key)["dtype"]))
        )
        whole.flags.writeable = False  # as every backend's arrays: stored data is read-only
        return whole

    def writer(self, key: DataKey, metadata: dict[str, Any]) -> _SQLiteWriter:
        return _SQLiteWriter(self, key, metadata)

    def finalize_all(self, writers: Sequence[Writer]) -> None:
        """Make the products of ``writers`` visible together, in one transaction; if it
        fails, it is rolled back, every writer is aborted, and the error is raised."""
        own = writers_of(self, writers, _SQLiteWriter)
        try:
            with self.connection() as db:  # commits on success, rolls back on any error
                for writer in own:
                    writer.publish(db)
        except BaseException:
            for writer in own:
                writer.abort()
            raise

    def save(self, key: DataKey, chunks: list[Chunk], metadata: dict[str, Any]) -> None:
        save_whole(self, key, chunks, metadata)

    def delete(self, key: DataKey) -> None:
        with self.connection() as db:
            gone = db.execute("DELETE FROM products WHERE key = ?", (str(key),)).rowcount
            db.execute("DELETE FROM chunks WHERE key = ?", (str(key),))
        if not gone:
            raise DataNotFound(f"{key} is not stored in {self.path}")

    def keys(self) -> list[DataKey]:
        rows = self.connection().execute("SELECT key FROM products").fetchall()
        return sorted(DataKey.parse(r[0]) for r in rows)

    def size(self, key: DataKey) -> int:
        return int(self.metadata(key)["nbytes"])

    def lock(self, key: DataKey, timeout: float) -> KeyLock:
        return KeyLock(self.path.with_name(self.path.name + ".locks") / f"{key}.lock", timeout)

    def clean(self, key: DataKey) -> None:
        prefix = staging_prefix(key)
        with self.connection() as db:
            db.execute("DELETE FROM chunks WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
