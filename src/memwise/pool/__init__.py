"""Supervised worker pools."""

from memwise.pool.api import WorkerPool

__all__ = ["WorkerPool"]
