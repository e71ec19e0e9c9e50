"""Watching a pool from the outside: Prometheus metrics, a console view, a progress bar,
pipeline stages.

Everything here reads a pool only through ``pool.snapshot()`` and ``pool.subscribe()``, and a
pipeline only through ``pipeline.snapshot().stages``; nothing here changes what it watches.
"""
