"""``serve(pool)``: run the app with uvicorn in this thread until SIGTERM or Ctrl+C.

Binding anywhere but loopback without a token is refused before a socket is opened: the
dashboard shows function names, keys and memory of the machine, and nothing should show them
to a network by accident.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from memwise.errors import ServerConfigError
from memwise.observe.stages import Pipelines
from memwise.server.app import create_app
from memwise.server.broadcast import Broadcaster

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

TOKEN_ENV = "MEMWISE_TOKEN"
# Seconds open event streams get to end on their own once the server is stopping.
GRACE_S = 3


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to use (the option, else ``$MEMWISE_TOKEN``); raises ``ServerConfigError``
    when ``host`` is not loopback and there is none."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise ServerConfigError(
            f"refusing to serve on {host}, which is not a loopback address, without a token: "
            f"pass --token (or token=) or set ${TOKEN_ENV}; every request must then present "
            "it. Bind to 127.0.0.1 to serve this machine only."
        )
    return token


def serve(
    pool: WorkerPool,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    pipelines: Pipelines = (),
    on_ready: Callable[[str], None] | None = None,
    **app_options: Any,
) -> None:
    """Serve the dashboard and API of ``pool`` until SIGTERM or Ctrl+C; then return.

    ``port=0`` picks a free port; ``on_ready(url)`` is called once it listens. Options not
    named here go to :func:`~memwise.server.create_app`. The pool is not shut down here:
    whoever made it does that (``memwise serve`` does).
    """
    server, sock = _server(pool, host, port, token, pipelines, on_ready, app_options)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def serving(
    pool: WorkerPool,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    pipelines: Pipelines = (),
    **app_options: Any,
) -> Iterator[str]:
    """Serve ``pool`` from a background thread for the length of a ``with`` block.

    Yields the base URL (``http://127.0.0.1:<port>/``); on leaving, event streams end and
    the server stops before the block's exit returns. For notebooks, scripts and tests.
    """
    ready = threading.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    server, sock = _server(pool, host, port, token, pipelines, on_ready, app_options)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="memwise-server", daemon=True
    )
    thread.start()
    try:
        while not ready.wait(0.05):
            if not thread.is_alive():
                raise RuntimeError("the memwise server thread ended before it listened")
        yield urls[0]
    finally:
        server.stop()
        thread.join()
        sock.close()


def _server(
    pool: WorkerPool,
    host: str,
    port: int,
    token: str | None,
    pipelines: Pipelines,
    on_ready: Callable[[str], None] | None,
    app_options: dict[str, Any],
) -> tuple[_Server, socket.socket]:
    token = resolve_token(host, token)
    app = create_app(pool, pipelines=pipelines, token=token, **app_options)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ws="none",  # no websocket route: do not load a websocket library
        timeout_graceful_shutdown=GRACE_S,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    return _Server(config, app.state.broadcaster, on_ready, url), sock


class _Server(uvicorn.Server):
    """uvicorn that ends event streams on a signal and returns instead of re-raising it."""

    def __init__(
        self,
        config: uvicorn.Config,
        broadcaster: Broadcaster,
        on_ready: Callable[[str], None] | None,
        url: str,
    ) -> None:
        super().__init__(config)
        self._broadcaster = broadcaster
        self._on_ready = on_ready
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready(self._url)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._broadcaster.close()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown; the caller still has a pool to
        # shut down, so the signal ends here, as a normal return.
        self._captured_signals.clear()

    def stop(self) -> None:
        """Stop from another thread: end event streams, then the server."""
        self._broadcaster.close()
        self.should_exit = True
