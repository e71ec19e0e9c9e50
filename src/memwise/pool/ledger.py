"""What a worker and its supervisor share in memory, beside the pipe.

The pipe says what the worker was sent and what it finished; it cannot say what the worker is
doing *now*. Two facts need that, without a message per task:

- which task a worker was running when it died (the one to blame), as opposed to tasks queued
  behind it that never started (``started``);
- which queued tasks can still be taken back from a worker stuck on a long task, so that an
  idle worker runs them instead (work stealing): the supervisor raises ``revoked`` and the
  worker skips every task sent before that point that it has not started yet.

``gate`` makes the worker's "check revoked, then mark started" atomic with the supervisor's
"revoke, then read started", so a task is either started by its worker or taken back, never
both and never neither.
"""

from __future__ import annotations

from typing import Any


class Ledger:
    def __init__(self, ctx: Any) -> None:
        self.started = ctx.RawValue("q", 0)
        self.revoked = ctx.RawValue("q", -1)
        self.gate = ctx.Lock()

    def begin(self, task_id: int, epoch: int) -> bool:
        """Worker side: mark ``task_id`` (sent in ``epoch``) started, unless it was revoked."""
        with self.gate:
            if epoch <= self.revoked.value:
                return False
            self.started.value = task_id
            return True

    def revoke(self, epoch: int) -> int | None:
        """Supervisor side: revoke every unstarted task sent up to ``epoch``.

        Returns the id of the task the worker started last, or None if the gate could not be
        taken (a worker killed inside it never releases it; such a worker is dying anyway).
        """
        if not self.gate.acquire(timeout=0.1):
            return None
        try:
            self.revoked.value = epoch
            return int(self.started.value)
        finally:
            self.gate.release()
