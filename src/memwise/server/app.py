"""``create_app(pool)``: the ASGI app behind ``memwise serve`` and the dashboard.

========================  ==================================================================
``GET /``                 the dashboard (one offline page: HTML, CSS, plain JavaScript)
``GET /api/snapshot``     JSON of ``pool.snapshot()``, plus ``pipelines`` with their stages
``GET /api/events``       server-sent events: ``pool`` (a pool event), ``snapshot`` (every
                          ``interval`` seconds), ``lost`` (events this client missed);
                          ``?kinds=worker_died,task_failed`` keeps only those pool events
``GET /metrics``          Prometheus text format
``GET /healthz``          200 while the pool works, 503 with the reason once it does not
``POST /api/resize``      ``{"workers": n}``: ``pool.resize(n)``; needs the token even on
                          loopback, so a server started without one changes nothing
========================  ==================================================================

Nothing sent to the server is ever run; any other method gets 405.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Collection
from importlib import resources
from typing import TYPE_CHECKING, Any, get_args

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from memwise.errors import BrokenPool, ClosedError
from memwise.observe.stages import Pipelines, named, stage_rows
from memwise.pool.events import EventKind
from memwise.server.broadcast import Broadcaster, TooManyClients
from memwise.server.guard import LOOPBACK_HOSTS, Guard

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

log = logging.getLogger("memwise")

EVENT_KINDS = frozenset(get_args(EventKind))
STATIC = {
    "": ("index.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
HEALTHY_STATES = ("running",)
# Upper bound of POST /api/resize: a typo must not start thousands of processes.
MAX_WORKERS = 256
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format


def create_app(
    pool: WorkerPool,
    *,
    pipelines: Pipelines = (),
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
    max_clients: int = 64,
    client_buffer: int = 256,
    interval: float = 0.5,
    max_body: int = 64 * 1024,
) -> Starlette:
    """The ASGI app observing ``pool`` (and ``pipelines``); run it alone or mount it.

    Args:
        pool: the pool to show; read only through ``snapshot()`` and ``subscribe()``.
        pipelines: objects whose ``snapshot().stages`` describe their stages; a mapping
            names them, otherwise their ``name`` attribute (or their position) does.
        token: when set, every request must present it (``Authorization: Bearer <token>``
            or ``?token=``). Required by :func:`memwise.server.serve` for non-loopback binds.
        allowed_hosts: host names accepted in the ``Host`` header; default: loopback names
            without a token, any with one.
        max_clients: event streams open at once; more get 503.
        client_buffer: pool events held per event stream; a slower client loses the oldest
            and receives a ``lost`` event saying how many.
        interval: seconds between snapshots pushed on event streams.
        max_body: request bodies larger than this get 413.
    """
    if max_clients < 1 or client_buffer < 1 or interval <= 0 or max_body < 0:
        raise ValueError(
            "max_clients and client_buffer must be >= 1, interval > 0 and max_body >= 0"
        )
    by_name = named(pipelines)

    def snapshot_dict() -> dict[str, Any]:
        data = pool.snapshot().to_dict()
        data["pipelines"] = stage_rows(by_name)
        return data

    def snapshot_json() -> str:
        return json.dumps(snapshot_dict(), separators=(",", ":"))

    def running() -> bool:
        try:
            return pool.snapshot().state in HEALTHY_STATES
        except Exception:  # a pool that cannot even describe itself is not running
            return False

    broadcaster = Broadcaster(
        pool,
        snapshot_json,
        running=running,
        max_clients=max_clients,
        buffer=client_buffer,
        interval=interval,
    )
    files = {
        path: (
            resources.files("memwise.server").joinpath("static").joinpath(name).read_bytes(),
            media,
        )
        for path, (name, media) in STATIC.items()
    }

    def static(path: str) -> Route:
        body, media = files[path]

        async def endpoint(request: Request) -> Response:
            return Response(body, media_type=media, headers={"cache-control": "no-cache"})

        return Route(f"/{path}", endpoint)

    async def snapshot(request: Request) -> Response:
        text = await run_in_threadpool(snapshot_json)
        return Response(text, media_type="application/json", headers={"cache-control": "no-store"})

    async def events(request: Request) -> Response:
        kinds = _kinds(request.query_params.get("kinds"))
        try:
            client = broadcaster.connect(kinds)
        except TooManyClients as exc:
            return _error(503, f"{exc}; try again later", {"retry-after": "5"})
        return StreamingResponse(
            broadcaster.stream(client),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    registries: list[Any] = []

    def scrape() -> bytes:
        # prometheus_client is imported at the first scrape, not before: a server nobody
        # scrapes does not carry it.
        from memwise.observe.metrics import exposition, registry_for

        if not registries:
            registries.append(registry_for(pool.snapshot, by_name))
        return exposition(registries[0])

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(scrape)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        snap = await run_in_threadpool(pool.snapshot)
        if snap.state in HEALTHY_STATES:
            return JSONResponse({"status": "ok", "state": snap.state})
        reason = snap.broken_reason or f"the pool is {snap.state}"
        return JSONResponse({"status": "unavailable", "state": snap.state, "reason": reason}, 503)

    async def resize(request: Request) -> Response:
        if token is None:
            return _error(
                403,
                "changing the pool needs a token, even on loopback: start the server with "
                "--token (or create_app(token=...)) and send it",
            )
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f'the body is not JSON ({exc}); send {{"workers": <int>}}')
        workers = body.get("workers") if isinstance(body, dict) else None
        if isinstance(workers, bool) or not isinstance(workers, int):
            return _error(400, f'send {{"workers": <int>}}, got {body!r:.200}')
        if not 1 <= workers <= MAX_WORKERS:
            return _error(400, f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
        try:
            await run_in_threadpool(pool.resize, workers)
        except (ClosedError, BrokenPool) as exc:
            return _error(409, f"the pool cannot be resized: {exc}")
        return JSONResponse({"workers": workers})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        # The detail (exception text, maybe paths or data) goes to the log, not to the client.
        log.error(
            "memwise server: %s %s failed",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return _error(500, "internal error; see the server log")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        broadcaster.close()

    hosts = allowed_hosts if allowed_hosts is not None else (None if token else LOOPBACK_HOSTS)
    app = Starlette(
        routes=[
            *(static(path) for path in STATIC),
            Route("/api/snapshot", snapshot),
            Route("/api/events", events),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/api/resize", resize, methods=["POST"]),
        ],
        middleware=[Middleware(Guard, token=token, allowed_hosts=hosts, max_body=max_body)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.broadcaster = broadcaster
    return app


def _kinds(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    kinds = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = sorted(kinds - EVENT_KINDS)
    if unknown:
        raise HTTPException(
            400, f"unknown event kinds {unknown}; choose from {sorted(EVENT_KINDS)}"
        )
    return kinds


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status, headers=headers)
