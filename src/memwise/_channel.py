"""Fast framed messages over a ``multiprocessing`` connection's file descriptor.

``Connection.recv_bytes`` costs two system calls and a ``BytesIO`` per message, and
``Connection.poll`` builds a selector on every call: together about 20 µs, more than the rest
of a task's round trip through the supervisor. ``Channel`` reads whatever is available in one
system call and splits it into messages, so a burst of results costs one read. The framing is
the one ``Connection`` uses (a 4-byte big-endian length, or -1 and an 8-byte length for
messages over 2 GiB), so either end may use a plain ``Connection``.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, Protocol

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_CHUNK = 256 * 1024
_SCRATCH = 64 * 1024
_LONG = 0x7FFFFFFF


class Channel(Protocol):
    fd: int

    def send(self, data: bytes) -> None: ...
    def receive(self) -> list[bytearray]: ...
    def drain(self) -> list[bytearray]: ...


class PipeEnd:
    """One end of a two-way link made of two one-way pipes (see :func:`pipe`).

    Looks like a duplex ``multiprocessing`` connection where the pool uses one: ``fileno``
    is the end it reads from (for selectors), ``close`` closes both, and it travels to a
    starting process like any connection.
    """

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    def fileno(self) -> int:
        return int(self.reader.fileno())

    @property
    def closed(self) -> bool:
        return bool(self.reader.closed)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    # What _ConnectionChannel uses, where pipes are not file descriptors.
    def send_bytes(self, data: bytes) -> None:
        self.writer.send_bytes(data)

    def recv_bytes(self) -> bytes:
        return bytes(self.reader.recv_bytes())

    def poll(self) -> bool:
        return bool(self.reader.poll())


def pipe(ctx: Any) -> tuple[PipeEnd, PipeEnd]:
    """A two-way link between this process and a child: two one-way pipes.

    A message through a pipe costs the kernel less than through the socket pair that
    ``ctx.Pipe(duplex=True)`` makes: a ping-pong between two processes takes about half
    the time (``memwise bench overhead`` measures both).
    """
    down_r, down_w = ctx.Pipe(duplex=False)
    up_r, up_w = ctx.Pipe(duplex=False)
    return PipeEnd(up_r, down_w), PipeEnd(down_r, up_w)


def channel(conn: Any) -> Channel:
    """A :class:`Channel` over ``conn``: a :class:`PipeEnd` or a duplex connection."""
    if sys.platform == "win32":
        return _ConnectionChannel(conn)
    if isinstance(conn, PipeEnd):
        return FdChannel(conn.reader.fileno(), conn.writer.fileno())
    return FdChannel(conn.fileno())


class FdChannel:
    """One end of a two-way link, for the thread that owns it (POSIX).

    ``fd`` is read from and ``write_fd`` written to: the same descriptor for a socket pair,
    two for a pair of pipes.
    """

    __slots__ = ("_buffer", "_scratch", "fd", "write_fd")

    def __init__(self, fd: int, write_fd: int | None = None) -> None:
        self.fd = fd
        self.write_fd = fd if write_fd is None else write_fd
        self._buffer = bytearray()
        # Reused for every read: os.read(fd, n) would allocate (and page-fault) n bytes anew.
        self._scratch = bytearray(_SCRATCH)

    def send(self, data: bytes) -> None:
        """Write one message; blocks until the peer has room for it."""
        size = len(data)
        if size > _LONG:
            header = _HEADER.pack(-1) + _LONG_HEADER.pack(size)
        else:
            header = _HEADER.pack(size)
        if size < _CHUNK:
            _write_all(self.write_fd, header + data)
        else:
            _write_all(self.write_fd, header)
            _write_all(self.write_fd, data)

    def receive(self) -> list[bytearray]:
        """Read what is available (blocking until something is) and return whole messages.

        Raises ``EOFError`` when the peer has closed its end.
        """
        count = os.readv(self.fd, [self._scratch])
        if not count:
            raise EOFError
        buffer = self._buffer
        buffer += memoryview(self._scratch)[:count]
        messages: list[bytearray] = []
        while True:
            message = self._take_message(buffer)
            if message is None:
                return messages
            messages.append(message)

    def drain(self) -> list[bytearray]:
        """Every whole message still readable, without blocking: for a peer that has died."""
        os.set_blocking(self.fd, False)
        messages: list[bytearray] = []
        try:
            while True:
                messages.extend(self.receive())
        except (EOFError, OSError):
            return messages

    def _take_message(self, buffer: bytearray) -> bytearray | None:
        if len(buffer) < 4:
            return None
        (size,) = _HEADER.unpack_from(buffer)
        start = 4
        if size == -1:
            if len(buffer) < 12:
                return None
            (size,) = _LONG_HEADER.unpack_from(buffer, 4)
            start = 12
        end = start + size
        if len(buffer) < end and size > _CHUNK:
            # A large message: read the rest straight into place instead of growing the
            # buffer chunk by chunk. The peer is writing it now, so this does not wait long.
            message = bytearray(size)
            have = len(buffer) - start
            message[:have] = buffer[start:]
            _read_into(self.fd, memoryview(message)[have:])
            del buffer[:]
            return message
        if len(buffer) < end:
            return None
        message = buffer[start:end]
        del buffer[:end]
        return message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_into(fd: int, view: memoryview) -> None:
    while view:
        count = os.readv(fd, [view])
        if count == 0:
            raise EOFError
        view = view[count:]


class _ConnectionChannel:
    """The same interface over a plain ``Connection``, where pipes are not file descriptors."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.fd = -1

    def send(self, data: bytes) -> None:
        self._conn.send_bytes(data)

    def receive(self) -> list[bytearray]:
        return [bytearray(self._conn.recv_bytes())]

    def drain(self) -> list[bytearray]:
        messages: list[bytearray] = []
        try:
            while self._conn.poll():
                messages.extend(self.receive())
        except (EOFError, OSError):
            pass
        return messages
