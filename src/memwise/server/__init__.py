"""The memwise server: dashboard, JSON API, server-sent events, Prometheus metrics.

An optional extra (``pip install memwise[server]``); never imported by ``import memwise``.
"""

from memwise.server.app import create_app
from memwise.server.run import serve, serving

__all__ = ["create_app", "serve", "serving"]
