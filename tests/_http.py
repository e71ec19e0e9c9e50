"""Small loopback HTTP helpers for the server tests (stdlib only, bounded by timeouts)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 20.0


def request(
    base: str,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(base: str, path: str, **options: Any) -> tuple[int, Any]:
    status, _, body = request(base, path, **options)
    return status, json.loads(body)


class EventStream:
    """A raw server-sent-events connection, read message by message."""

    def __init__(self, base: str, path: str, *, rcvbuf: int | None = None) -> None:
        parts = urlsplit(base)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((parts.hostname, parts.port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def _until(self, separator: bytes) -> bytes:
        while separator not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the event stream")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(separator, 1)
        return head

    def messages(self, timeout: float = TIMEOUT):
        """Yield (event name, data) until ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self._until(b"\n\n").decode()
            # Chunked transfer encoding frames the stream; drop the chunk-size lines.
            lines = [line for line in raw.splitlines() if ":" in line or line.startswith("event")]
            fields = dict(line.split(": ", 1) for line in lines if ": " in line)
            if "event" in fields:
                yield fields["event"], json.loads(fields.get("data", "null"))
        raise TimeoutError("no matching event in time")

    def close(self) -> None:
        self.sock.close()
