"""Storage backends behind one Protocol: a directory and a SQLite database."""

from memwise.data.storage.base import KeyLock, Storage, Writer
from memwise.data.storage.directory import DirectoryStorage
from memwise.data.storage.sqlite import SQLiteStorage

__all__ = ["DirectoryStorage", "KeyLock", "SQLiteStorage", "Storage", "Writer"]
