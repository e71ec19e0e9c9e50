"""``WorkerPool.stats()``: what a pool is doing and has done, per slot and in total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memwise.memory import usage

if TYPE_CHECKING:
    from memwise.pool.supervisor import Supervisor


def snapshot(sup: Supervisor) -> dict[str, Any]:
    """Totals and one row per slot, readable from any thread (possibly a moment stale)."""
    workers = dict(sup.workers)
    slots = []
    for slot in range(sup.config.max_workers):
        worker = workers.get(slot)
        row: dict[str, Any] = {
            "slot": slot,
            "pid": None,
            "state": "stopped",
            "key": None,
            "tasks_done": 0,
            "private": None,
            "rss": None,
            "restarts": sup.slot_restarts[slot],
            "recycles": dict(sup.slot_recycles.get(slot, {})),
        }
        if worker is not None:
            outstanding = list(worker.outstanding)
            row.update(
                pid=worker.pid,
                state="busy" if outstanding else worker.state.value,
                key=outstanding[0].key if outstanding else worker.last_key,
                tasks_done=worker.tasks_done,
            )
            try:
                measured = usage(worker.pid, pss=False)
                row.update(private=measured.private, rss=measured.rss)
            except (ProcessLookupError, PermissionError):
                pass
        slots.append(row)
    running = sum(len(w.outstanding) for w in [*workers.values(), *list(sup.retiring)])
    return {
        **sup.counts,
        "queued": len(sup.incoming) + len(sup.queue),
        "running": running,
        "workers": len(workers),
        "recycles": dict(sup.recycles),
        "slots": slots,
    }
