"""The start-up memory check: will N recognizers fit in the memory this machine has free?

The need is *measured*, not guessed: one recognizer is loaded in a probe worker and its
private memory (RssAnon: what it alone holds, excluding the shared model pages of the
libraries) is taken after one recognition, when its search structures exist. N of those plus
a headroom for the server itself is compared with the memory available (``MemAvailable``,
or a configured limit when that is lower, as in a container).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from memwise.errors import InsufficientMemory
from memwise.memory import format_size

OnShort = Literal["refuse", "warn"]
log = logging.getLogger("memwise")


@dataclass(frozen=True)
class MemoryPlan:
    """What a configuration needs against what there is."""

    workers: int
    per_worker: int  # measured private memory of one recognizer, bytes
    headroom: int
    available: int

    @property
    def needed(self) -> int:
        return self.workers * self.per_worker + self.headroom

    @property
    def fits(self) -> bool:
        return self.needed <= self.available

    @property
    def suggested(self) -> int:
        """The most workers that fit (0 when not even one does)."""
        return max(0, (self.available - self.headroom) // max(1, self.per_worker))

    def describe(self) -> str:
        return (
            f"{self.workers} recognizer(s) x {format_size(self.per_worker)} measured + "
            f"{format_size(self.headroom)} headroom = {format_size(self.needed)}, with "
            f"{format_size(self.available)} available"
        )


def check(plan: MemoryPlan, on_short: OnShort) -> None:
    """Refuse (``InsufficientMemory``) or warn when the plan does not fit; silent when it does."""
    if plan.fits:
        return
    advice = (
        f"use at most {plan.suggested} worker(s)"
        if plan.suggested
        else "free memory or lower the headroom: not even one recognizer fits"
    )
    message = f"not enough memory: {plan.describe()}; {advice}"
    if on_short == "refuse":
        raise InsufficientMemory(message, plan.suggested)
    log.warning("%s (starting anyway, as configured)", message)
