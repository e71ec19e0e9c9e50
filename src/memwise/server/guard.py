"""The checks every request passes before it reaches a route: host, token, body size.

Pure ASGI, so it also guards the app when mounted inside another Starlette or FastAPI app.

- **Host**: without a token, only loopback host names are accepted in the ``Host`` header, so
  that a web page elsewhere cannot reach a loopback dashboard by DNS rebinding.
- **Token**: when one is set, every request presents it, as ``Authorization: Bearer <token>``
  or as a ``token`` query parameter (what a browser's ``EventSource`` can send); compared in
  constant time.
- **Body**: larger than ``max_body`` bytes gets 413, whether announced by Content-Length or
  streamed; the server never buffers more than that.
- **WebSocket**: the host and token checks apply to the handshake too, and, where the host
  names are restricted, an ``Origin`` header (sent by every browser) must name one of them, so
  that a page on another site cannot open a socket with the user's browser (cross-site
  WebSocket hijacking). A refused handshake is closed with code 1008 (policy violation).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware applying the checks above to every HTTP request and WebSocket."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Collection[str] | None,
        max_body: int,
    ) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan: nothing from a client
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if scope["type"] == "websocket":
            refusal = refusal or self._origin_refusal(headers)
            if refusal is not None:
                # Before accepting: the client's handshake is answered 403 and nothing runs.
                await send({"type": "websocket.close", "code": 1008, "reason": refusal[1][:120]})
            else:
                await self.app(scope, receive, send)
            return
        if refusal is not None:
            await _json(send, *refusal)
            return
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._max_body:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _json(send, 413, self._too_large())

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, dict] | None:
        if self._hosts is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self._hosts:
                return (
                    421,
                    (
                        f"host {host!r} is not served here; this server answers loopback names "
                        "only unless it was started with a token"
                    ),
                    {},
                )
        if self._token is not None and not self._authorized(scope, headers):
            return (
                401,
                (
                    "this server needs its token: send 'Authorization: Bearer <token>' "
                    "or add ?token=<token> to the URL"
                ),
                {"www-authenticate": "Bearer"},
            )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "Content-Length is not a number", {}
            if size > self._max_body:
                return 413, self._too_large(), {}
        return None

    def _origin_refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, dict] | None:
        origin = headers.get(b"origin")
        if origin is None or self._hosts is None:  # not a browser, or any host is welcome
            return None
        try:
            host = urlsplit(origin.decode("latin-1")).hostname
        except ValueError:
            host = None
        if host is not None and host.lower() in self._hosts:
            return None
        return 403, f"WebSocket from origin {origin.decode('latin-1')[:60]!r} is not served", {}

    def _too_large(self) -> str:
        return f"request body larger than {self._max_body} bytes"

    def _authorized(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        assert self._token is not None
        presented = b""
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            presented = authorization[7:].strip()
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if query.get("token"):
                presented = query["token"][0].encode("latin-1")
        return hmac.compare_digest(presented, self._token)


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _json(send: Send, status: int, error: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
