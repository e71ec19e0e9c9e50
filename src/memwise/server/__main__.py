"""``python -m memwise.server CONFIG``: the process ``memwise serve`` turns into.

``memwise serve`` parses and checks its options with the full CLI, then replaces itself (same
pid, same signals) with this lean entry point, so that a long-running server does not keep
the CLI's libraries in memory. CONFIG is JSON: host, port, workers, min_workers, recycle
(tasks, memory, idle) and budget; the token, if any, comes in ``$MEMWISE_TOKEN`` so that it
never shows in the process list.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

from memwise.budget import MemoryBudget
from memwise.memory import trim
from memwise.pool.api import WorkerPool
from memwise.pool.policies import Recycle
from memwise.server.run import TOKEN_ENV, serve


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m memwise.server CONFIG_JSON (see: memwise serve --help)")
        return 2
    config: dict[str, Any] = json.loads(argv[0])
    token = os.environ.get(TOKEN_ENV) or None

    def ready(url: str) -> None:
        # Start-up garbage (import-time objects, parsed config) goes back to the OS before
        # the server idles.
        gc.collect()
        trim()
        shown = f"{url}?token=<token>" if token else url
        print(f"memwise serve: dashboard on {shown} (Ctrl+C to stop)", flush=True)

    budget = config.get("budget")
    with WorkerPool(
        config.get("workers"),
        min_workers=config.get("min_workers"),
        recycle=Recycle(**config.get("recycle", {})),
        budget=MemoryBudget(budget) if budget else None,
    ) as pool:
        serve(pool, host=config["host"], port=config["port"], token=token, on_ready=ready)
    print("memwise serve: stopped; every worker has exited", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
