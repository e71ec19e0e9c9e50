"""The memwise server: dashboard, JSON API, server-sent events, Prometheus metrics.

An optional extra (``pip install memwise[server]``); never imported by ``import memwise``.
Its names load on first use, so a service importing only :mod:`memwise.server.guard` does not
carry the app, uvicorn or the broadcaster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memwise.server.app import create_app
    from memwise.server.run import serve, serving

__all__ = ["create_app", "serve", "serving"]
_HOMES = {
    "create_app": "memwise.server.app",
    "serve": "memwise.server.run",
    "serving": "memwise.server.run",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
