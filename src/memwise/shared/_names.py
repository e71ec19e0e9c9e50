"""Segment names: who owns a segment, who created it, and whether the owner still lives.

A name looks like ``/mw_<owner>_<tag>_<creator>_<n>`` (numbers in base 36):

- ``owner``: pid of the process whose pool answers for the segment (the pool's root process);
  the orphan sweep unlinks a segment once its owner is dead.
- ``tag``: the owner's start time, so a recycled pid does not pass for the dead owner.
- ``creator``: pid of the process that created it (a worker creating result slots on behalf of its
  parent); the owner reclaims what a dead creator left behind.
- ``n``: a per-process counter.

At most 30 characters including the slash, which macOS requires (PSHMNAMLEN).
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

PREFIX = "mw_"
SHM_DIR = "/dev/shm"
MAX_NAME = 30
_TAG_MODULO = 36**4
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

_counter = itertools.count()


@dataclass(frozen=True)
class Owner:
    """The identity segment names carry: a pid plus a tag derived from its start time.

    Picklable, so a parent can pass its own ``Owner`` to workers that create slots on its behalf.
    """

    pid: int
    tag: str


@dataclass(frozen=True)
class ParsedName:
    owner: Owner
    creator: int


def _b36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _DIGITS[rest] + digits
        if not number:
            return digits


def _start_tag(pid: int) -> str | None:
    """The tag of a live process, or None if it is gone or a zombie.

    Linux reads the start time (in clock ticks since boot) from /proc; elsewhere the tag is a
    constant and liveness falls back to ``kill(pid, 0)``.
    """
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after its closing one.
    fields = text[text.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return _b36(int(fields[19]) % _TAG_MODULO)


@lru_cache(maxsize=1)
def _owner_of(pid: int) -> Owner:
    return owner_of(pid)


def owner_of(pid: int) -> Owner:
    """Process ``pid`` as an owner (read now, while it lives)."""
    return Owner(pid, _start_tag(pid) or "0")


def current_owner() -> Owner:
    """This process as an owner (cached per pid, so a forked child gets its own)."""
    return _owner_of(os.getpid())


def new_name(owner: Owner) -> str:
    """A fresh name for a segment created by this process on behalf of ``owner``."""
    name = f"/{PREFIX}{_b36(owner.pid)}_{owner.tag}_{_b36(os.getpid())}_{_b36(next(_counter))}"
    if len(name) > MAX_NAME:  # would need ~10^14 segments from one process
        raise OverflowError(f"segment name {name!r} is longer than {MAX_NAME} characters")
    return name


def parse(name: str) -> ParsedName | None:
    """The owner and creator encoded in a memwise name (with or without the slash), else None."""
    parts = name.lstrip("/").split("_")
    if len(parts) != 5 or parts[0] + "_" != PREFIX:
        return None
    try:
        return ParsedName(Owner(int(parts[1], 36), parts[2]), int(parts[3], 36))
    except ValueError:
        return None


def is_alive(owner: Owner) -> bool:
    """Whether the process named by ``owner`` still runs (a zombie counts as dead)."""
    return _start_tag(owner.pid) == owner.tag


def list_segments() -> list[str] | None:
    """Names (with the slash) of the memwise segments on this machine.

    None where shared memory cannot be listed (macOS has no /dev/shm): sweeping is best effort
    there.
    """
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return None
    return ["/" + entry for entry in entries if entry.startswith(PREFIX)]


def owned_segments(pid: int | None = None) -> list[str] | None:
    """Names of the segments in /dev/shm owned by process ``pid`` (default: this one).

    What an application checks at exit to confirm it left nothing behind; None where shared
    memory cannot be listed (macOS).
    """
    names = list_segments()
    if names is None:
        return None
    pid = os.getpid() if pid is None else pid
    return [name for name in names if (parsed := parse(name)) and parsed.owner.pid == pid]
