"""Data products, strax-like: plugins, lineage, safe storage and parallel chunk streaming.

Needs the ``data`` extra (pydantic, packaging, filelock). See docs/data.md.
"""

from memwise.data.chunk import Chunk, merge_sorted, rechunk
from memwise.data.context import Context
from memwise.data.lineage import DataKey
from memwise.data.plugin import Plugin, untracked
from memwise.data.registry import Registry
from memwise.data.storage import DirectoryStorage, SQLiteStorage, Storage

__all__ = [
    "Chunk",
    "Context",
    "DataKey",
    "DirectoryStorage",
    "Plugin",
    "Registry",
    "SQLiteStorage",
    "Storage",
    "merge_sorted",
    "rechunk",
    "untracked",
]
