"""Every message between a pool's supervisor and a worker process, as a small typed class.

One duplex pipe per worker carries them, each pickled (protocol 5) by :func:`encode`:

    supervisor → worker:  Init once, then Run any number of times, then Stop
    worker → supervisor:  Ready or InitError, then one Done per task, in the order sent

A Run marked ``reply`` (the call path, see :mod:`memwise.pool.inbox`) has its one task's Done
written to a second, one-way *reply* pipe instead, which the thread that sent it reads.

The tasks of one ``Run`` and of successive ones run strictly in order, which lets the
supervisor know which task a worker was running when it died: the oldest one without a
``Done``. Shared-memory slot handles (``TaskEntry.handles``, ``Run.restock``, ``Done.gifts``,
``Done.returns``) are explained in :mod:`memwise._oob`.

The classes are named tuples, sent as plain tuples led by a tag (see :func:`encode`); this
module imports only the standard library and memwise's light ``_wire``, since workers preload
it.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

from memwise import _wire

OK, RAISED = 0, 1  # Done.status


class InitOptions(NamedTuple):
    """How a worker is to behave, fixed for its life."""

    owner: Any  # memwise.shared.Owner: whose name its shared-memory slots carry
    shm_threshold: int  # buffers of at least this many bytes travel through slots
    recycle: Any  # memwise.pool.policies.Recycle: the worker stops taking tasks when due
    report_memory: bool  # send its private memory with every Done
    trim: bool  # malloc_trim after every task
    measure_peak: bool  # send each task's peak memory rise with its Done
    # Modules of the functions the pool's workers run now, imported before READY by a spare so
    # that its first task does not wait for them.
    imports: tuple[str, ...] = ()


class Init(NamedTuple):
    """The first message: the pickled ``(initializer, initargs)`` (or None) and options."""

    initializer: bytes | None
    options: InitOptions


class TaskEntry(NamedTuple):
    """One task of a Run: its id, its pickled ``(fn, args, kwargs)``, its argument slots."""

    task_id: int
    payload: bytes
    handles: tuple[Any, ...]


class Run(NamedTuple):
    """Tasks to run in order; ``restock``: warm slots for results; ``epoch`` numbers the Run
    (see :mod:`memwise.pool.ledger`); ``reply``: send the Dones down the reply pipe."""

    tasks: list[TaskEntry]
    restock: tuple[Any, ...]
    epoch: int
    reply: bool = False


class Stop(NamedTuple):
    """Exit once the tasks received are done."""


class Ready(NamedTuple):
    """The initializer finished."""

    pid: int


class InitError(NamedTuple):
    """Start-up failed: the pickled exception, and what failed (for the message)."""

    error: bytes
    stage: str


class Done(NamedTuple):
    """One task finished: its value (``status`` OK) or its exception (RAISED), pickled."""

    task_id: int
    status: int
    payload: bytes
    seconds: float  # how long the call ran in the worker
    gifts: tuple[Any, ...]  # slots holding the result's large buffers
    returns: list[Any]  # slots lent to the worker that it no longer uses
    private: int | None  # its private memory after the task, when asked for
    peak: int | None  # the task's peak memory rise, when asked for


_CLASSES: tuple[type, ...] = (Init, Run, Stop, Ready, InitError, Done)
_TAGS = {cls: tag for tag, cls in enumerate(_CLASSES)}
_new = tuple.__new__


def encode(message: Any) -> bytes:
    """A message as sent down the pipe: a plain tuple led by the class's tag.

    Pickling named tuples as such costs several times more than plain tuples (a class
    reference and a Python-level constructor call each way, per task), so they travel plain.
    """
    if type(message) is Run:
        tasks = [tuple(entry) for entry in message.tasks]
        return pickle.dumps(
            (_TAGS[Run], tasks, message.restock, message.epoch, message.reply), _wire.PROTOCOL
        )
    return pickle.dumps((_TAGS[type(message)], *message), _wire.PROTOCOL)


_DONE = _TAGS[Done]


def encode_done(
    task_id: int,
    status: int,
    payload: bytes,
    seconds: float,
    gifts: tuple[Any, ...],
    returns: list[Any],
    private: int | None,
    peak: int | None,
) -> bytes:
    """``encode(Done(...))`` without building the ``Done``: a worker sends one per task."""
    return pickle.dumps(
        (_DONE, task_id, status, payload, seconds, gifts, returns, private, peak), _wire.PROTOCOL
    )


def decode(data: bytes | bytearray) -> Any:
    """A message as received (one of the classes above)."""
    plain = pickle.loads(data)
    cls = _CLASSES[plain[0]]
    if cls is Run:
        tasks = [_new(TaskEntry, entry) for entry in plain[1]]
        return _new(Run, (tasks, plain[2], plain[3], plain[4]))
    return _new(cls, plain[1:])
