"""When a worker process should be replaced by a fresh one.

A long-running Python process rarely gives memory back to the OS: freed objects leave the heap
fragmented, and C libraries keep their caches. Replacing the process is the one remedy that
always works, and a forkserver makes it cheap (a few milliseconds), so memwise recycles
workers by policy instead of hoping the heap shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from memwise.memory import parse_size


@dataclass(frozen=True)
class Recycle:
    """Replace a worker after it has done enough, grown too big, idled, or switched keys.

    Args:
        tasks: replace a worker after this many tasks.
        memory: replace a worker whose *private* memory (Linux ``RssAnon``, USS elsewhere;
            never RSS, which counts shared pages) exceeds this after a task. Bytes, or a
            string such as ``"300 MiB"``. The task in flight always finishes first.
        idle: replace (or, above ``min_workers``, stop) a worker idle for this many seconds.
        on_key_change: replace a worker before it runs a task whose ``key`` differs from the
            key of its previous task, so per-key state never leaks between keys.
        hard_memory: kill a worker whose private memory exceeds this *during* a task (polled
            every ``poll`` seconds); the task is retried per the pool's ``retries``.
        poll: how often ``hard_memory`` is checked, in seconds.
        spares: while there is work, keep this many extra workers started and initialized,
            so that a recycled worker is replaced at once instead of after a process start-up
            (which, with heavy imports, can cost more than many tasks). Only with ``tasks``,
            ``memory``, ``on_key_change`` or ``hard_memory``; 0 for none.
    """

    tasks: int | None = None
    memory: int | str | None = None
    idle: float | None = None
    on_key_change: bool = False
    hard_memory: int | str | None = None
    poll: float = 0.05
    spares: int = 1

    def __post_init__(self) -> None:
        if self.tasks is not None and self.tasks < 1:
            raise ValueError(f"Recycle(tasks=) must be at least 1, got {self.tasks}")
        if self.idle is not None and self.idle <= 0:
            raise ValueError(f"Recycle(idle=) must be positive seconds, got {self.idle}")
        if self.poll <= 0:
            raise ValueError(f"Recycle(poll=) must be positive seconds, got {self.poll}")
        if self.spares < 0:
            raise ValueError(f"Recycle(spares=) must be >= 0, got {self.spares}")

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory)

    @property
    def hard_memory_bytes(self) -> int | None:
        return None if self.hard_memory is None else parse_size(self.hard_memory)

    @property
    def needs_memory_reports(self) -> bool:
        return self.memory is not None

    @property
    def warm_spares(self) -> int:
        """Spares worth keeping: none unless workers are replaced in the middle of work."""
        replaces_busy_workers = (
            self.tasks is not None
            or self.memory is not None
            or self.on_key_change
            or self.hard_memory is not None
        )
        return self.spares if replaces_busy_workers else 0

    @property
    def limits_pipelining(self) -> bool:
        """Whether tasks must go one at a time: a key change is decided before a task starts.

        (Retiring after a task needs no such limit: the worker itself stops starting tasks.)
        """
        return self.on_key_change

    @property
    def retires_after_task(self) -> bool:
        """Whether :meth:`after_task` can ever give a reason."""
        return self.tasks is not None or self.memory is not None

    def after_task(self, tasks_done: int, private: int | None) -> str | None:
        """The reason to retire a worker that just finished a task, or None."""
        if self.tasks is None and self.memory is None:
            return None  # the common case, checked after every task on both sides
        if self.tasks is not None and tasks_done >= self.tasks:
            return "tasks"
        limit = self.memory_bytes
        if limit is not None and private is not None and private > limit:
            return "memory"
        return None
