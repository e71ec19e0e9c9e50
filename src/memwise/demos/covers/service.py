"""The cover service: a small Starlette app that renders cover collages in worker processes.

``GET /cover?title=...&photos=a,b,c`` answers a JPEG (``render.render_cover``). Renders run in
a :class:`~memwise.pool.WorkerPool` under a :class:`~memwise.budget.MemoryBudget`: a render
starts only when its reservation fits, and one that cannot get memory within ``max_wait``
answers ``503`` with ``Retry-After`` and the budget's message. Workers scale to zero
(``min_workers=0`` with ``Recycle(idle=...)``), so the idle service holds no worker and has
imported neither numpy nor Pillow: its memory is Python, Starlette and uvicorn. With
``inline=True`` it renders in its own threads instead, as the seed's service did (the
comparison the benchmark draws).

Run it with ``python -m memwise.demos.covers.service`` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from memwise.demos.covers.render import check_request, render_cover
from memwise.errors import MemoryBudgetExceeded, MemwiseError
from memwise.memory import trim
from memwise.server.guard import LOOPBACK_HOSTS, Guard

if TYPE_CHECKING:
    from memwise.pool.api import WorkerPool

DEFAULT_PHOTOS = (
    "rocket",
    "motorcycle",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "astronaut",
    "coffee",
    "chelsea",
)
RENDER_MEMORY = "40 MiB"  # reserved per render: its measured rise (~30 MiB), rounded up
RETRY_AFTER_S = 2
GRACE_S = 3
HEAVY = ("numpy", "PIL")
MAX_BODY = 64 * 1024  # every route is a GET: no request needs a body


def create_app(
    make_pool: Callable[[], WorkerPool] | None,
    render_memory: int | str = RENDER_MEMORY,
    *,
    dashboard: bool = False,
) -> Guard:
    """The ASGI app; renders go to the pool ``make_pool()`` builds, or, with None, to this
    process's threads.

    The pool is built by the first render, not before: until then the service has not even
    imported it (the seed's "conditional initialisation"). With ``dashboard``, the pool is
    built at once and memwise's dashboard (:func:`memwise.server.create_app`) is mounted
    at ``/memwise/``; that costs the idle service about 2 MiB more (31.8 MiB RSS against
    29.6 measured), past the seed's 30 MB, which is why it is not the default. A bare
    Starlette ``Router``: the ``Starlette`` class adds middleware this service does not use,
    and their imports cost idle memory. On shutdown the pool is shut down. Guarded for
    loopback: requests must name a loopback host, so no web page can reach it by DNS
    rebinding.
    """
    rendering = 0
    pool: WorkerPool | None = None
    streams: list[Any] = []  # the mounted dashboard's broadcaster, if any

    async def cover(request: Request) -> Response:
        nonlocal rendering
        rendering += 1
        try:
            return await _cover(request)
        finally:
            rendering -= 1
            if not rendering:
                trim()  # the JPEGs passed through this heap: give it back while idle

    async def _cover(request: Request) -> Response:
        title = request.query_params.get("title", "Covers")
        photos = [p for p in request.query_params.get("photos", "").split(",") if p]
        photos = photos or list(DEFAULT_PHOTOS)
        try:
            check_request(title, photos)
        except ValueError as exc:
            return _error(400, "InvalidRequest", str(exc))
        try:
            if make_pool is None:
                jpeg = await asyncio.to_thread(render_cover, title, photos)
            else:
                future = _pool().options(memory=render_memory).submit(render_cover, title, photos)
                jpeg = await asyncio.wrap_future(future)
        except MemoryBudgetExceeded as exc:
            return _error(503, "MemoryBudgetExceeded", str(exc), retry_after=RETRY_AFTER_S)
        except MemwiseError as exc:
            return _error(500, type(exc).__name__, f"{exc}; the render was not done, retry it")
        return Response(jpeg, media_type="image/jpeg")

    def _pool() -> WorkerPool:
        nonlocal pool
        if pool is None:
            assert make_pool is not None
            pool = make_pool()
        return pool

    async def healthz(_request: Request) -> Response:
        workers = 0 if pool is None else sum(1 for w in pool.snapshot().workers if w.pid)
        loaded = [name for name in HEAVY if name in sys.modules]
        return JSONResponse({"status": "ok", "workers": workers, "loaded": loaded})

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        trim()  # what importing the service allocated and freed goes back before idling
        try:
            yield
        finally:
            # Starlette does not run a mounted app's lifespan: the dashboard's streams end here.
            for broadcaster in streams:
                broadcaster.close()
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True, timeout=5.0)

    routes: list[BaseRoute] = [Route("/cover", cover), Route("/healthz", healthz)]
    if dashboard and make_pool is not None:
        from memwise.server import create_app as dashboard_app

        dashboard_asgi = dashboard_app(_pool())
        streams.append(dashboard_asgi.state.broadcaster)
        routes.append(Mount("/memwise", app=dashboard_asgi))
    return Guard(
        Router(routes, lifespan=lifespan),
        token=None,
        allowed_hosts=LOOPBACK_HOSTS,
        max_body=MAX_BODY,
    )


def _error(status: int, kind: str, message: str, retry_after: int | None = None) -> Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return JSONResponse({"error": kind, "message": message}, status, headers=headers)


def make_pool(
    budget: int | str = "100 MiB", max_wait: float = 10.0, idle: float = 5.0, workers: int = 1
) -> WorkerPool:
    """Scale-to-zero workers under a memory budget, as the service uses them.

    One worker by default: with 100 MiB, the service (~20 MiB), a worker (~25 MiB) and one
    render's rise (~30 MiB) fill the budget. A second worker would itself hold ~25 MiB that
    the budget cannot refuse (it governs tasks, not process starts). A render that cannot
    get its reservation within ``max_wait`` fails with ``MemoryBudgetExceeded`` (a 503).
    """
    from memwise.budget import MemoryBudget
    from memwise.pool.api import WorkerPool
    from memwise.pool.policies import Recycle

    return WorkerPool(
        workers,
        min_workers=0,
        recycle=Recycle(idle=idle),
        budget=MemoryBudget(budget, max_wait=max_wait),
        trim=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Serve on 127.0.0.1 until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(description="memwise cover service (loopback only)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1")
    where.add_argument("--fd", type=int, help="an already listening socket (for tests)")
    parser.add_argument("--budget", default="100 MiB", help="memory budget of the renders")
    parser.add_argument("--max-wait", type=float, default=10.0, help="seconds, then 503")
    parser.add_argument("--idle", type=float, default=5.0, help="idle worker lifetime, s")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--inline", action="store_true", help="render in this process")
    parser.add_argument(
        "--dashboard", action="store_true", help="mount memwise's dashboard at /memwise/"
    )
    args = parser.parse_args(argv)

    def pool() -> WorkerPool:
        return make_pool(args.budget, args.max_wait, args.idle, args.workers)

    config = uvicorn.Config(
        create_app(None if args.inline else pool, dashboard=args.dashboard),
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        log_level="warning",
        # An open dashboard event stream gets this long once stopping, then it is cut off.
        timeout_graceful_shutdown=GRACE_S,
    )
    sockets: Any = None if args.fd is None else [socket.socket(fileno=args.fd)]
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    main()
