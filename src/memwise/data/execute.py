"""Running plugins on chunks: the chain one chunk goes through, in whatever process runs it.

The plugins a request has to compute form a chain; each chunk of its inputs goes through the
whole chain in one task (all the plugins, in dependency order), so intermediate products never
travel between processes, and only the outputs that are saved or asked for come back.
"""

from __future__ import annotations

import importlib
import multiprocessing.util
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memwise.data.chunk import Chunk
from memwise.data.plugin import Plugin
from memwise.errors import DataError, PluginError

__all__ = ["Bundle", "Chain", "Instances", "PluginRef", "Step", "run_chain", "synchronize"]


@dataclass(frozen=True)
class PluginRef:
    """How any process finds a plugin class: its module, or the file it was loaded from."""

    module: str
    qualname: str
    file: str | None = None
    # The class itself, in the process that made the reference; never pickled, so classes
    # defined inside functions work wherever they are defined.
    plugin: type[Plugin] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, plugin: type[Plugin]) -> PluginRef:
        module = sys.modules.get(plugin.__module__)
        file = getattr(module, "__memwise_plugin_file__", None)
        return cls(plugin.__module__, plugin.__qualname__, file, plugin)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "plugin": None}

    def resolve(self) -> type[Plugin]:
        if self.plugin is not None:
            return self.plugin
        try:
            return self._find()
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"cannot find plugin {self.qualname} of module {self.module} in process "
                f"{os.getpid()} ({exc}); define plugin classes at module level of an importable "
                "module or a plugin directory, or give them parallel = 'thread' or 'none'"
            ) from exc

    def _find(self) -> type[Plugin]:
        if self.module in sys.modules:
            module = sys.modules[self.module]
        elif self.file is not None:
            from memwise.data.registry import load_file

            module = load_file(Path(self.file))
        else:
            module = importlib.import_module(self.module)
        obj: Any = module
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True)
class Step:
    """One plugin of a chain, with its config (as a dict) and a process-independent identity."""

    ref: PluginRef
    config: dict[str, Any]
    ident: str  # the plugin's lineage digest: one instance per identity per process
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    run_id: str
    steps: tuple[Step, ...]
    keep: frozenset[str]  # outputs returned to the caller


@dataclass
class Bundle:
    """One chunk's worth of inputs: loaded arrays, and time ranges for the sources."""

    start: int
    end: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # source → ranges


class Instances:
    """Plugin instances of one process (or one computation), ``setup`` once each."""

    def __init__(self, teardown_at_exit: bool = False) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Plugin] = {}
        self._teardown_at_exit = teardown_at_exit
        self._registered_in: int | None = None

    def get(self, step: Step) -> Plugin:
        with self._lock:
            plugin = self._made.get(step.ident)
            if plugin is None:
                cls = step.ref.resolve()
                plugin = cls(cls.Config.model_validate(step.config))
                plugin.setup()
                self._made[step.ident] = plugin
                if self._teardown_at_exit and self._registered_in != os.getpid():
                    # Registered here, in the process that set the plugin up: a process
                    # forked from one that registered earlier starts with no finalizers.
                    # A finalizer, not atexit: worker processes end without running atexit.
                    multiprocessing.util.Finalize(None, self.teardown, exitpriority=10)
                    self._registered_in = os.getpid()
            return plugin

    def teardown(self) -> None:
        with self._lock:
            made, self._made = self._made, {}
        for plugin in made.values():
            plugin.teardown()


# Plugins set up in a worker process stay until the process exits.
_WORKER = Instances(teardown_at_exit=True)


def run_chain(
    chain: Chain, bundle: Bundle, instances: Instances | None = None
) -> tuple[int, int, dict[str, np.ndarray]]:
    """Push one bundle through every step of ``chain``: its range and the outputs in ``keep``.

    ``instances`` defaults to this process's own (a worker's plugins stay set up).
    """
    instances = _WORKER if instances is None else instances
    products = dict(bundle.arrays)
    for step in chain.steps:
        plugin = instances.get(step)
        if step.inputs:
            outputs = plugin.run_compute({name: products[name] for name in step.inputs})
        else:
            pieces = [
                plugin.run_compute({"run_id": chain.run_id, "start": s, "end": e})
                for s, e in bundle.ranges[plugin.outputs()[0]]
            ]
            outputs = {name: np.concatenate([p[name] for p in pieces]) for name in plugin.outputs()}
        products.update(outputs)
    return bundle.start, bundle.end, {name: products[name] for name in chain.keep}


Leaf = Iterator[tuple[int, int, Any]]  # (start, end, payload) in time order


def synchronize(leaves: dict[str, Leaf], sources: set[str]) -> Iterator[Bundle]:
    """Group leaf chunks into bundles that end at the same time in every leaf.

    Leaves cut differently (a product stored with other chunk boundaries) are joined until
    their ends agree. Payloads of names in ``sources`` are time ranges (a source leaf is named
    after its plugin's first output); the others, arrays.
    """
    names = list(leaves)
    pending: dict[str, list[tuple[int, int, Any]]] = {n: [] for n in names}
    start: int | None = None

    def end_of(name: str) -> int | None:
        return pending[name][-1][1] if pending[name] else None

    while True:
        for name in names:
            if not pending[name] and not _advance(leaves[name], pending[name]):
                if any(pending.values()):
                    raise DataError(f"input {name!r} ended before the others")
                return
        while len({end_of(n) for n in names}) > 1:
            laggard = min(names, key=lambda n: end_of(n) or 0)
            if not _advance(leaves[laggard], pending[laggard]):
                raise DataError(f"input {laggard!r} ended before the others")
        items = {n: pending[n] for n in names}
        first = min(items[n][0][0] for n in names)
        bundle = Bundle(first if start is None else start, items[names[0]][-1][1])
        for name in names:
            if name in sources:
                bundle.ranges[name] = [(s, e) for s, e, _ in items[name]]
            else:
                arrays = [payload for _, _, payload in items[name]]
                bundle.arrays[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        start = bundle.end
        pending = {n: [] for n in names}
        yield bundle


def _advance(leaf: Leaf, into: list[tuple[int, int, Any]]) -> bool:
    try:
        into.append(next(leaf))
    except StopIteration:
        return False
    return True


def chunk_leaf(chunks: Iterator[Chunk]) -> Leaf:
    """A stored product as a leaf; arrays as plain ndarrays (memmaps pickle as copies)."""
    for chunk in chunks:
        yield chunk.start, chunk.end, chunk.data.view(np.ndarray)
