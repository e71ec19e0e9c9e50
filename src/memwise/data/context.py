"""The Context: ask for a data product of a run; get it from storage, or compute it once.

``get_iter(run_id, name)`` streams chunks in time order: loaded if any storage frontend holds
the product, computed otherwise. Computing follows one protocol for every backend:

1. take the inter-process locks of every key about to be written (sorted, so two processes
   never wait for each other in a circle), waiting with backoff if another process holds one;
2. look again: if the other process has stored the product meanwhile, load it instead;
3. clean what a killed writer left, stream every chunk through the chain of plugins, write
   each saved output through a storage writer, and finalize them all together
   (``Storage.finalize_all``: every output becomes visible, or none does);
4. on any error, or if the caller stops iterating, abort the writers: nothing partial stays.

A process-wide re-entrancy guard refuses to compute the same (run, name) twice at once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from memwise.data.chunk import Chunk, rechunk
from memwise.data.execute import (
    Bundle,
    Chain,
    Instances,
    Leaf,
    PluginRef,
    Step,
    chunk_leaf,
    run_chain,
    synchronize,
)
from memwise.data.lineage import DataKey, lineage_hash, lineage_of
from memwise.data.plugin import Plugin
from memwise.data.registry import Registry, parse_dependency
from memwise.data.storage.base import Storage, Writer, dtype_to_json
from memwise.errors import DataNotFound, ReentrantComputation

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

__all__ = ["Context"]

_in_progress: set[tuple[str, str]] = set()
_in_progress_lock = threading.Lock()


@dataclass(frozen=True)
class Resolved:
    """A plugin as this context's configuration makes it: config, lineage and its digest."""

    plugin: type[Plugin]
    config: BaseModel
    lineage: dict[str, Any]
    digest: str
    inputs: tuple[str, ...]

    def step(self) -> Step:
        return Step(
            PluginRef.of(self.plugin),
            self.config.model_dump(mode="json"),
            self.digest,
            self.inputs,
        )


class Context:
    """Data products of runs, from ``storage`` frontends (searched in order; the first is
    where computed data is written) and the plugins of ``registry``.

    Args:
        storage: a :class:`Storage`, a directory path, or a sequence of them.
        plugins: plugin classes to register.
        config: options; each plugin takes the fields its ``Config`` declares.
        workers: processes (or threads) for parallel plugins; 0 computes in this thread.
        pool: a WorkerPool to run process-parallel chunks on (default: one made when first
            needed, with ``workers`` processes, closed by :meth:`close`).
        lock_timeout: seconds to wait for another process computing the same data.
        prefetch: chunks in flight at once (default ``2 * workers``): bounds memory.
    """

    def __init__(
        self,
        storage: Storage | str | Path | Sequence[Storage | str | Path],
        *,
        registry: Registry | None = None,
        plugins: Sequence[type[Plugin]] = (),
        config: Mapping[str, Any] | None = None,
        workers: int = 2,
        pool: WorkerPool | None = None,
        lock_timeout: float = 600.0,
        prefetch: int | None = None,
    ) -> None:
        frontends: Sequence[Storage | str | Path] = (
            storage if isinstance(storage, (list, tuple)) else [storage]  # type: ignore[list-item]
        )
        self.storage: list[Storage] = [_as_storage(s) for s in frontends]
        if not self.storage:
            raise ValueError("give at least one storage")
        self.registry = registry or Registry()
        for plugin in plugins:
            self.registry.register(plugin)
        self._config: dict[str, Any] = dict(config or {})
        self._config_generation = 0
        self._workers = workers
        self._pool = pool
        self._own_pool: WorkerPool | None = None
        self._lock_timeout = lock_timeout
        self._prefetch = prefetch or 2 * max(1, workers)
        self._cache: dict[str, dict[str, Resolved]] = {}
        self._cache_tag: tuple[int, int] = (-1, -1)
        self._lock = threading.RLock()
        self.stats: Counter[str] = Counter()

    # ---- configuration ------------------------------------------------------------------

    def register(self, plugin: type[Plugin]) -> type[Plugin]:
        return self.registry.register(plugin)

    def set_config(self, **options: Any) -> None:
        """Change options; plans, lineages and keys are worked out again."""
        with self._lock:
            self._config.update(options)
            self._config_generation += 1

    def resolve(self, name: str) -> dict[str, Resolved]:
        """Every data name ``name`` needs (itself included) → its resolved plugin; cached
        until the registry or the configuration changes."""
        with self._lock:
            tag = (self.registry.generation, self._config_generation)
            if tag != self._cache_tag:
                self._cache, self._cache_tag = {}, tag
            if name not in self._cache:
                self._cache[name] = self._resolve(name)
            return self._cache[name]

    def _resolve(self, name: str) -> dict[str, Resolved]:
        resolved: dict[str, Resolved] = {}
        for plugin in self.registry.plan(name):
            config = plugin.make_config(self._config)
            inputs = tuple(parse_dependency(d, plugin.__qualname__).name for d in plugin.depends_on)
            lineage = lineage_of(plugin, config, {d: resolved[d].digest for d in inputs})
            entry = Resolved(plugin, config, lineage, lineage_hash(lineage), inputs)
            for output in plugin.outputs():
                resolved[output] = entry
        return resolved

    def lineage(self, name: str) -> dict[str, Any]:
        return self.resolve(name)[name].lineage

    def key_for(self, run_id: str, name: str) -> DataKey:
        """The key ``name`` of ``run_id`` is stored under with the current configuration."""
        if "-" in run_id:
            raise ValueError(f"run_id {run_id!r} may not contain '-' (it separates key parts)")
        return DataKey(run_id, name, self.resolve(name)[name].digest)

    def is_stored(self, run_id: str, name: str) -> bool:
        return self._find(self.key_for(run_id, name)) is not None

    def _find(self, key: DataKey) -> Storage | None:
        for storage in self.storage:
            if storage.exists(key):
                return storage
        return None

    # ---- getting data -------------------------------------------------------------------

    def get_array(self, run_id: str, name: str) -> np.ndarray:
        """The whole product as one array (computed and stored first if need be).

        Loaded from a directory storage, it is a read-only memory map of the stored file:
        no copy is made, pages are read as they are touched.
        """
        storage = self._find(self.key_for(run_id, name))
        if storage is not None:
            self.stats["loaded"] += 1
            return storage.load_array(self.key_for(run_id, name))
        datas = [c.data for c in self.get_iter(run_id, name) if len(c)]
        if not datas:
            return np.zeros(0, self.resolve(name)[name].plugin.output_dtypes()[name])
        return datas[0] if len(datas) == 1 else np.concatenate(datas)

    def get_iter(
        self, run_id: str, name: str, *, chunk_bytes: int | None = None
    ) -> Iterator[Chunk]:
        """The product's chunks in time order, streamed; ``chunk_bytes`` re-cuts them."""
        chunks = self._chunks(run_id, name)
        return rechunk(chunks, chunk_bytes) if chunk_bytes else chunks

    def _chunks(self, run_id: str, name: str) -> Iterator[Chunk]:
        key = self.key_for(run_id, name)
        storage = self._find(key)
        if storage is not None:
            self.stats["loaded"] += 1
            yield from storage.load(key)
            return
        yield from self._compute(run_id, name)

    def _needed(self, run_id: str, name: str) -> list[Resolved]:
        """The plugins to run for ``name``, in dependency order: those whose inputs are not
        all stored, back to the first stored product or the sources."""
        resolved = self.resolve(name)
        needed: list[Resolved] = []

        def need(entry: Resolved) -> None:
            if entry in needed:
                return
            for dep in entry.inputs:
                if not (resolved[dep].plugin.save and self.is_stored(run_id, dep)):
                    need(resolved[dep])
            needed.append(entry)

        need(resolved[name])
        return needed

    def _compute(self, run_id: str, name: str) -> Iterator[Chunk]:
        needed = self._needed(run_id, name)
        saved = sorted(
            DataKey(run_id, output, entry.digest)
            for entry in needed
            if entry.plugin.save
            for output in entry.plugin.outputs()
        )
        with _guard(run_id, [o for e in needed for o in e.plugin.outputs()]), ExitStack() as held:
            for key in saved:
                held.enter_context(self.storage[0].lock(key, self._lock_timeout))
            target = self.key_for(run_id, name)
            storage = self._find(target)
            if storage is not None:  # another process computed it while we waited
                self.stats["waited"] += 1
                self.stats["loaded"] += 1
                yield from storage.load(target)
                return
            needed = self._needed(run_id, name)
            yield from self._write(run_id, name, needed, [k for k in saved if not self._find(k)])

    def _write(
        self, run_id: str, name: str, needed: list[Resolved], keys: list[DataKey]
    ) -> Iterator[Chunk]:
        resolved = self.resolve(name)
        writers: dict[DataKey, Writer] = {}
        done = False
        try:
            for key in keys:
                self.storage[0].clean(key)
                entry = resolved[key.name]
                writers[key] = self.storage[0].writer(key, _metadata(key.name, entry))
            for start, end, outputs in self._run(run_id, name, needed, {k.name for k in keys}):
                for key, writer in writers.items():
                    writer.write(Chunk(outputs[key.name], start, end))
                yield Chunk(outputs[name], start, end)
            # Together: a reader must never find one output of this computation without
            # the others (or next to outputs of another computation).
            self.storage[0].finalize_all(list(writers.values()))
            done = True
            self.stats["computed"] += len(writers)
        finally:
            if not done:
                for writer in writers.values():
                    writer.abort()

    def _run(
        self, run_id: str, name: str, needed: list[Resolved], keep: set[str]
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        resolved = self.resolve(name)
        made = {o for e in needed for o in e.plugin.outputs()}
        chain = Chain(run_id, tuple(e.step() for e in needed), frozenset(keep | {name}))
        local = Instances()
        try:
            leaves: dict[str, Leaf] = {}
            for entry in needed:
                for dep in entry.inputs:
                    if dep not in made and dep not in leaves:
                        key = DataKey(run_id, dep, resolved[dep].digest)
                        storage = self._find(key)
                        if storage is None:
                            raise DataNotFound(f"{key} vanished from storage while in use")
                        leaves[dep] = chunk_leaf(storage.load(key))
            sources = set()
            for entry in needed:
                if entry.plugin.is_source():
                    first = entry.plugin.outputs()[0]
                    ranges = local.get(entry.step()).chunk_ranges(run_id)
                    leaves[first] = ((s, e, None) for s, e in ranges)
                    sources.add(first)
            bundles = synchronize(leaves, sources)
            yield from self._execute(chain, bundles, local, needed)
        finally:
            local.teardown()

    def _execute(
        self, chain: Chain, bundles: Iterator[Bundle], local: Instances, needed: list[Resolved]
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        from memwise.pool.imap import bounded_results  # the pool is needed only here

        modes = {e.plugin.parallel for e in needed}
        if self._workers < 1 or "none" in modes:
            for bundle in bundles:
                yield run_chain(chain, bundle, local)
            return
        if "thread" in modes:
            with ThreadPoolExecutor(self._workers, thread_name_prefix="memwise-data") as ex:

                def submit_thread(bundle: Bundle) -> Future[Any]:
                    return ex.submit(run_chain, chain, bundle, local)

                yield from bounded_results(submit_thread, bundles, self._prefetch, True)
            return
        timeouts = [e.plugin.chunk_timeout for e in needed if e.plugin.chunk_timeout]
        submitter = self._worker_pool().options(timeout=max(timeouts) if timeouts else None)

        def submit_process(bundle: Bundle) -> Future[Any]:
            return submitter.submit(run_chain, chain, bundle)

        yield from bounded_results(submit_process, bundles, self._prefetch, True)

    def _worker_pool(self) -> WorkerPool:
        with self._lock:
            if self._pool is not None:
                return self._pool
            if self._own_pool is None:
                from memwise.pool.api import WorkerPool

                self._own_pool = WorkerPool(self._workers)
            return self._own_pool

    def close(self) -> None:
        """End the worker pool this context started (a pool given to it stays open)."""
        with self._lock:
            pool, self._own_pool = self._own_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_storage(value: Storage | str | Path) -> Storage:
    if isinstance(value, (str, Path)):
        from memwise.data.storage.directory import DirectoryStorage

        return DirectoryStorage(value)
    return value


def _metadata(name: str, entry: Resolved) -> dict[str, Any]:
    return {
        "dtype": dtype_to_json(entry.plugin.output_dtypes()[name]),
        "lineage": entry.lineage,
        "plugin": entry.plugin.__qualname__,
        "version": entry.plugin.version,
    }


@contextmanager
def _guard(run_id: str, names: list[str]) -> Iterator[None]:
    """Refuse to compute a (run, name) this process is computing already."""
    wanted = {(run_id, n) for n in names}
    with _in_progress_lock:
        busy = wanted & _in_progress
        if busy:
            listed = ", ".join(f"{r}/{n}" for r, n in sorted(busy))
            raise ReentrantComputation(
                f"this process is already computing {listed}; a plugin or thread asked for it "
                "again while it was being made (use the first result, or another run_id)"
            )
        _in_progress.update(wanted)
    try:
        yield
    finally:
        with _in_progress_lock:
            _in_progress.difference_update(wanted)
