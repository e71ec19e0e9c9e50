"""A stage's description, the envelope items travel in, and the error record."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Fused", "ItemError", "Stage", "Submits"]


class Submits(Protocol):
    """What a process stage runs its tasks on: a ``WorkerPool`` or ``pool.options(...)``.

    Any ``concurrent.futures.Executor`` fits too.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: ``fn(item) -> result`` run by ``workers`` at once.

    Attributes:
        fn: called with the previous stage's result (the source item for the first stage).
        name: shown in snapshots and error messages; the function's name by default.
        workers: items worked on at once: threads of this process, or tasks in flight on
            ``pool``.
        pool: run ``fn`` as tasks on this pool (its processes), instead of in threads.
        capacity: the most items waiting in front of the stage.
    """

    fn: Callable[[Any], Any]
    name: str
    workers: int
    pool: Submits | None
    capacity: int

    @property
    def kind(self) -> str:
        return "threads" if self.pool is None else "pool"


@dataclass(frozen=True)
class Fused:
    """Stage functions run one after the other within one call: the stages of ``fuse=True``.

    On a pool that makes one task per item instead of one per stage: one round trip through
    the parent, and the results between the stages never leave the worker. Picklable whenever
    the functions are. An exception gets a note naming the stage that raised it.
    """

    fns: tuple[Callable[[Any], Any], ...]
    names: tuple[str, ...]

    def __call__(self, item: Any) -> Any:
        for fn, name in zip(self.fns, self.names, strict=True):
            try:
                item = fn(item)
            except Exception as exc:
                note = getattr(exc, "add_note", None)  # Python >= 3.11
                if note is not None:
                    note(f"(raised by {name!r}, fused into one task: {' + '.join(self.names)})")
                raise
        return item

    def then(self, fn: Callable[[Any], Any], name: str) -> Fused:
        return Fused((*self.fns, fn), (*self.names, name))


@dataclass(frozen=True)
class ItemError:
    """What ``errors="record"`` yields in place of an item whose stage raised.

    Attributes:
        index: the item's position in the source (0-based).
        stage: the name of the stage that raised (``"source"`` if the source itself raised).
        error: the exception.
    """

    index: int
    stage: str
    error: BaseException


class Item:
    """An item on its way: its sequence number, current value and the source item it came from.

    ``source`` is kept so that ``release`` can give it back (a leased frame) once the last stage
    is done with it, whatever happened in between.
    """

    __slots__ = ("error", "seq", "source", "value")

    def __init__(self, seq: int, value: Any) -> None:
        self.seq = seq
        self.value = value
        self.source = value
        self.error: ItemError | None = None
