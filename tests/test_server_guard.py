"""The Guard middleware on WebSockets: host, token and Origin are checked at the handshake."""

from __future__ import annotations

import warnings

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from memwise.server.guard import LOOPBACK_HOSTS, Guard

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(30)
LOCAL = "ws://127.0.0.1:8000"


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def guarded(token: str | None = None) -> Guard:
    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    hosts = None if token else LOOPBACK_HOSTS
    return Guard(app, token=token, allowed_hosts=hosts, max_body=1024)


def echoes(app: Guard, base_url: str = LOCAL, path: str = "/ws", **headers: str) -> bool:
    with TestClient(app) as client:
        try:
            with client.websocket_connect(base_url + path, headers=headers) as ws:
                ws.send_text("hi")
                return ws.receive_text() == "hi"
        except WebSocketDisconnect as refused:
            assert refused.code == 1008
            return False


def test_a_loopback_websocket_is_served():
    assert echoes(guarded())
    assert echoes(guarded(), origin="http://127.0.0.1:8000")
    assert echoes(guarded(), origin="http://localhost:3000")
    assert echoes(guarded(), origin="http://[::1]:8000")


def test_a_websocket_to_a_rebound_host_name_is_refused():
    assert not echoes(guarded(), base_url="ws://rebound.example")


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"]
)
def test_a_websocket_from_another_site_is_refused(origin):
    assert not echoes(guarded(), origin=origin)


def test_a_websocket_needs_the_token_when_one_is_set():
    assert not echoes(guarded("k3y"))
    assert not echoes(guarded("k3y"), authorization="Bearer wrong")
    assert echoes(guarded("k3y"), authorization="Bearer k3y")
    assert echoes(guarded("k3y"), path="/ws?token=k3y")
