"""Size classes: which segment size serves a request.

Classes grow by 2**(1/4) (about 1.19x) from 64 KiB, rounded up to whole pages. Powers of two would
reuse a little more often when request sizes wander, but slots are pre-faulted, so every unused
byte is real memory counted against the cap and /dev/shm: quarter steps waste at most 19% (9% on
average; up to 25% below 1 MiB, where page rounding shows) where powers of two waste up to 50%
(a 48 MB array would take a 64 MiB slot). Repeated requests of one shape, the common case, land
in one class either way.
"""

from __future__ import annotations

import math
import mmap
from functools import lru_cache

MIN_SIZE = 64 * 1024
STEPS_PER_DOUBLING = 4
_PAGE = mmap.PAGESIZE


@lru_cache(maxsize=1024)  # requests repeat: the same shapes go through the pool again and again
def size_class(nbytes: int) -> int:
    """The segment size that serves a request of ``nbytes`` (at least MIN_SIZE)."""
    if nbytes < 0:
        raise ValueError(f"cannot allocate {nbytes} bytes")
    if nbytes <= MIN_SIZE:
        return MIN_SIZE
    step = math.ceil(STEPS_PER_DOUBLING * math.log2(nbytes / MIN_SIZE))
    while True:  # floating point may land one step short
        size = -(-math.ceil(MIN_SIZE * 2 ** (step / STEPS_PER_DOUBLING)) // _PAGE) * _PAGE
        if size >= nbytes:
            return size
        step += 1
