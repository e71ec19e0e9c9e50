"""Running the speech server: uvicorn on the loopback interface, in a thread or in the
foreground (``python -m memwise.demos.speech.serve --workers 2 --port 8765``)."""

from __future__ import annotations

import argparse
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from memwise.demos.speech.app import MAX_MESSAGE_BYTES, close_streams, create_speech_app
from memwise.demos.speech.recognizer import MODES, RecognizerConfig
from memwise.demos.speech.service import ServiceConfig, SpeechService
from memwise.server.guard import Guard

# A frame larger than this is refused by the WebSocket layer itself (close code 1009); below
# it, the application answers an oversized frame with a clear error and keeps the connection.
_WS_HARD_LIMIT = 4 * MAX_MESSAGE_BYTES
GRACE_S = 3


def _loopback_only(host: str) -> None:
    # No token support here: this server only listens where nothing else can reach it.
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the speech server binds to loopback only (127.0.0.1), not {host!r}")


def _config(app: Guard, host: str, port: int) -> object:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws_max_size=_WS_HARD_LIMIT,
        lifespan="on",  # ends the dashboard's event streams on shutdown
        # Ctrl+C with a client still connected: it gets this long, then it is cut off.
        timeout_graceful_shutdown=GRACE_S,
    )


@contextmanager
def serving(service: SpeechService, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``service`` in a background thread; yields the base URL (``port=0``: any free
    port). Stops the server (not the service) on exit."""
    import uvicorn

    _loopback_only(host)
    app = create_speech_app(service)
    server = uvicorn.Server(_config(app, host, port))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, name="speech-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the speech server could not start on {host}:{port}")
        thread.join(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        close_streams(app)  # before stopping: an open event stream would hold the shutdown
        server.should_exit = True
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--modes", default="grammar", help=f"comma-separated, among {MODES}")
    parser.add_argument("--on-crash", choices=("rerun", "fail"), default="rerun")
    parser.add_argument("--memory-check", choices=("refuse", "warn"), default="refuse")
    parser.add_argument("--drain", type=float, default=30.0, help="shutdown deadline, seconds")
    args = parser.parse_args()
    _loopback_only(args.host)
    import uvicorn

    config = ServiceConfig(
        workers=args.workers,
        recognizer=RecognizerConfig(modes=tuple(args.modes.split(","))),
        on_crash=args.on_crash,
        memory_check=args.memory_check,
    )
    service = SpeechService(
        config, progress=lambda ready, total: print(f"{ready}/{total} recognizers ready")
    )
    print(f"memory: {service.memory.describe()}")
    try:
        app = create_speech_app(service)
        uvicorn.Server(_config(app, args.host, args.port)).run()  # type: ignore[arg-type]
    finally:
        cut = service.close(args.drain)
        print(f"stopped; cut short: {cut or 'none'}")


if __name__ == "__main__":
    main()
