"""One POSIX shared-memory segment, mapped into this process.

Segments are opened with ``shm_open`` directly (``_posixshmem``, what ``SharedMemory`` uses
underneath) so that multiprocessing's resource_tracker never hears of them: memwise decides when a
segment dies, and no tracker unlinks it behind a live pool or warns at exit.

A mapping is never closed explicitly. ``mmap.close()`` under a live view would leave numpy arrays
pointing at unmapped memory; instead the mmap object lives exactly as long as something references
it (this module, a pool, an attach cache, or any memoryview/ndarray built on it) and is unmapped
by its own deallocation. Unlinking a name is always safe: existing mappings keep the memory.
"""

from __future__ import annotations

import errno
import mmap
import os

from memwise.errors import SharedMemoryError
from memwise.shared._names import SHM_DIR

try:
    import _posixshmem
except ImportError:  # Windows
    _posixshmem = None

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_MIB = 1024 * 1024


class Segment:
    """A named shared-memory segment and its mapping in this process."""

    __slots__ = ("__weakref__", "name", "size", "view")

    def __init__(self, name: str, size: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.size = size
        # One writable memoryview per segment; slots and views are slices of it.
        self.view = memoryview(mapping)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {self.size})"


def shm_free_bytes() -> int | None:
    """Bytes free for shared memory, or None where that cannot be known (no /dev/shm)."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def shm_total_bytes() -> int | None:
    """Size of the shared-memory filesystem, or None where there is none to measure."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize


def _no_space(size: int, free: int | None) -> SharedMemoryError:
    have = "too little" if free is None else f"only {free / _MIB:.1f} MiB"
    return SharedMemoryError(
        f"cannot create a {size / _MIB:.1f} MiB shared-memory segment: {have} free in {SHM_DIR}. "
        "Release arrays you no longer need, remove leftovers with memwise.shared.sweep_orphans(), "
        "lower the pool's cap, or enlarge /dev/shm (for Docker: --shm-size)."
    )


def _require_posix() -> None:
    if _posixshmem is None:
        raise SharedMemoryError(
            "POSIX shared memory is not available on this platform; memwise shared slots need "
            "Linux or macOS"
        )


def _map(fd: int, size: int) -> mmap.mmap:
    # MAP_POPULATE builds the page tables in one kernel call instead of one fault per page.
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)


def create(name: str, size: int) -> Segment:
    """Create, size, reserve and map a new segment.

    Raises FileExistsError if the name is taken (the caller picks another) and SharedMemoryError
    when shared memory is too small. Reserving the pages up front (posix_fallocate) turns a full
    /dev/shm into this clear error instead of a SIGBUS on some later write.
    """
    _require_posix()
    free = shm_free_bytes()
    if free is not None and size > free:
        raise _no_space(size, free)
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        mapping = _map(fd, size)
    except BaseException as error:
        _posixshmem.shm_unlink(name)
        if not isinstance(error, OSError):
            raise
        if error.errno in (errno.ENOSPC, errno.ENOMEM):
            raise _no_space(size, shm_free_bytes()) from error
        raise SharedMemoryError(f"cannot create shared-memory segment {name}: {error}") from error
    finally:
        os.close(fd)
    return Segment(name, size, mapping)


def attach(name: str, size: int) -> Segment:
    """Map an existing segment created by this or another process."""
    _require_posix()
    try:
        fd = _posixshmem.shm_open(name, os.O_RDWR, 0o600)
    except FileNotFoundError:
        raise SharedMemoryError(
            f"shared-memory segment {name} no longer exists: its owner released or reclaimed it "
            "before this process attached (a slot handle is only valid while its owner holds it)"
        ) from None
    try:
        actual = os.fstat(fd).st_size
        if actual < size:
            raise SharedMemoryError(
                f"shared-memory segment {name} has {actual} bytes, expected {size}: the handle "
                "does not belong to this segment"
            )
        return Segment(name, size, _map(fd, size))
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove a segment's name; False if it was already gone. Mappings stay valid."""
    if _posixshmem is None:
        return False
    try:
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        return False
    return True
