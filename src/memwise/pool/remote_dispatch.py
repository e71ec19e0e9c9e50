"""How the remote supervisor deals queued tasks to its lanes: pipelined, in batches.

- **pipelining**: up to ``PIPELINE`` calls are in flight per lane, so a lane never waits for a
  round trip between tasks; the first call in flight is the one running. With
  ``Recycle(memory=)`` only ``PIPELINE_MEMORY``: calls already sent to a worker that grew too
  big still run on it;
- **batches**: a lane gets more calls once no more than half its pipeline is in flight, as many as
  fill its pipeline again, sent as one batch (one remote call, whose outcomes come back one by
  one): per task, that costs a fraction of a remote call each. A lone task goes at once;
- lanes are dealt tasks in turn, depth first, so work spreads evenly; a draining lane gets
  only the tasks of the keys pinned to it; a latest-wins task goes only to an idle lane;
- a batch that cannot be sent (a call that cannot be serialized here) or rebuilt on the worker
  (a call whose arguments cannot be unpickled there) is sent again task by task, so that only
  the bad task fails.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from memwise.pool.remote_lane import Lane, LaneTask, Sent

if TYPE_CHECKING:
    from memwise.pool.remote_lanes import LaneSupervisor

PIPELINE = 16  # calls in flight per lane: enough to hide a remote round trip per call
PIPELINE_MEMORY = 2  # with Recycle(memory=), which can only act between calls


def dispatch(sup: LaneSupervisor) -> None:
    """Send queued tasks to the lanes with room, in batches (see the module docstring)."""
    if sup.broken is not None or not sup.queue:
        return
    count = sup.pins.count
    lanes = [lane for lane in sup.lanes.values() if len(lane.sent) <= sup.pipeline // 2]
    batches: dict[int, list[LaneTask]] = {lane.index: [] for lane in lanes}
    full: set[int] = set()  # lanes whose batch may take no more (it holds a task sent alone)
    # Depth first, lanes in turn: work is dealt evenly over the lanes.
    for depth in range(1, sup.pipeline + 1):
        for lane in lanes:
            batch = batches[lane.index]
            if lane.index in full or not sup.queue or len(lane.sent) + len(batch) >= depth:
                continue
            if not accepts(sup, lane):
                continue
            # A draining lane runs only the tasks of the keys pinned to it.
            task = _next_task(sup, lane, lane.index < count, lane.busy or bool(batch))
            if task is None:
                continue
            if task.alone and batch:
                sup.queue.push_back([task])  # it goes in a batch of its own, next time
            else:
                batch.append(task)
                lane.dispatched += 1
            if task.alone:
                full.add(lane.index)
    for lane in lanes:
        if batches[lane.index]:
            _send(sup, lane, batches[lane.index])


def accepts(sup: LaneSupervisor, lane: Lane) -> bool:
    """Whether ``lane`` takes another task (not recycling, under ``Recycle(tasks=)``)."""
    limit = sup.config.recycle.tasks
    return lane.retiring is None and (limit is None or lane.dispatched < limit)


def _next_task(sup: LaneSupervisor, lane: Lane, general: bool, busy: bool) -> LaneTask | None:
    while True:
        task = sup.queue.pop_for(lane.index, general)
        if task is None:
            return None
        assert isinstance(task, LaneTask)
        if task.coalesce is not None and busy:
            sup.queue.push_back([task])  # a latest-wins task waits here for an idle lane
            return None
        if sup.latest.get(task.coalesce) is task:
            del sup.latest[task.coalesce]
        if task.claim():
            return task


def _send(sup: LaneSupervisor, lane: Lane, batch: list[LaneTask]) -> None:
    sent = [Sent(task) for task in batch]
    try:
        tokens = sup.transport.send(lane.handle, batch, [sup.notifier(lane, s) for s in sent])
    except Exception as exc:
        if len(batch) > 1:  # one bad call must not fail the others: each on its own
            for task in batch:
                _send(sup, lane, [task])
            return
        sup.fail(batch[0], exc, lane)  # the call could not be serialized: it fails alone
        return
    for one, token in zip(sent, tokens, strict=True):
        one.token = token
    if not lane.sent:
        lane.head_since = time.monotonic()
        sup.emit("task_started", task=batch[0], lane=lane)
    lane.sent.extend(sent)
