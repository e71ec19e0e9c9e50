"""Lineage: everything that determines a data product's content, and the key it is stored under.

The lineage of a product is the canonical JSON (sorted keys, no spaces) of its plugin's name and
version, the plugin's tracked config, the lineages of its dependencies and, for plugins with
``track_source``, a digest of ``compute``'s source. Its blake2b digest names the stored data,
so any change to one of these makes a new key and stale data is never read.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from memwise.data.plugin import Plugin
from memwise.data.registry import parse_dependency

__all__ = ["DataKey", "lineage_hash", "lineage_of"]

HASH_BYTES = 10


@dataclass(frozen=True, order=True)
class DataKey:
    """Where one data product of one run is stored: run, data name, lineage digest."""

    run_id: str
    name: str
    lineage: str

    def __str__(self) -> str:
        return f"{self.run_id}-{self.name}-{self.lineage}"

    @classmethod
    def parse(cls, text: str) -> DataKey:
        run_id, name, lineage = text.rsplit("-", 2)
        return cls(run_id, name, lineage)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def lineage_hash(lineage: dict[str, Any]) -> str:
    return hashlib.blake2b(canonical(lineage).encode(), digest_size=HASH_BYTES).hexdigest()


def source_digest(plugin: type[Plugin]) -> str:
    """A digest of the source of ``plugin.compute`` (and of the class, when it has one)."""
    try:
        text = inspect.getsource(plugin)
    except (OSError, TypeError):
        text = inspect.getsource(plugin.compute)
    return hashlib.blake2b(text.encode(), digest_size=HASH_BYTES).hexdigest()


def lineage_of(
    plugin: type[Plugin], config: BaseModel, dependencies: dict[str, str]
) -> dict[str, Any]:
    """The lineage of ``plugin``'s outputs, given its dependencies' lineage digests."""
    names = [parse_dependency(d, plugin.__qualname__).name for d in plugin.depends_on]
    # The class name, not its module: moving a plugin between files keeps its data.
    lineage: dict[str, Any] = {
        "plugin": plugin.__qualname__,
        "version": plugin.version,
        "config": plugin.tracked_config(config),
        "depends_on": {name: dependencies[name] for name in names},
    }
    if plugin.track_source:
        lineage["source"] = source_digest(plugin)
    return lineage
