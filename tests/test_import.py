"""``import memwise`` stays cheap: nothing heavy is imported until a name that needs it is used.

What an import pulls in can only be seen in a fresh interpreter: this test process has
imported everything long ago. So each check runs a small script in a subprocess and reads
back what ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import memwise

pytestmark = pytest.mark.timeout(60)

HEAVY = ["numpy", "psutil", "rich", "typer", "pydantic", "starlette", "ray"]


def fresh(script: str) -> object:
    """Run ``script`` in a new interpreter; return the JSON it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def heavy_after(statement: str) -> list[str]:
    return fresh(  # type: ignore[return-value]
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )


@pytest.mark.parametrize(
    "statement",
    [
        "import memwise",
        "import memwise.memory",
        "import memwise.budget",
        "import memwise.errors",
        "from memwise import MemoryBudget, MemoryBudgetExceeded, WorkerCrashed",
        "from memwise.memory import parse_size, private_memory; private_memory()",
    ],
)
def test_importing_memwise_imports_nothing_heavy(statement):
    assert heavy_after(statement) == []


def test_exports_resolve_lazily_in_a_fresh_interpreter():
    names = fresh(
        "import json, sys, memwise\n"
        "before = 'memwise.pool.api' in sys.modules\n"
        "pool_class = memwise.WorkerPool\n"
        "print(json.dumps([before, pool_class.__module__, pool_class.__name__,\n"
        "                  'memwise.pool.api' in sys.modules]))"
    )
    assert names == [False, "memwise.pool.api", "WorkerPool", True]


def test_star_import_binds_every_export():
    bound = fresh(
        "import json\nfrom memwise import *\n"
        "import memwise\n"
        "print(json.dumps(sorted(n for n in memwise.__all__ if n in globals())))"
    )
    assert bound == sorted(memwise.__all__)


def test_every_export_resolves_to_the_object_of_its_module():
    from memwise import actors, budget, errors, sessions
    from memwise.pool import api

    assert memwise.WorkerPool is api.WorkerPool
    assert memwise.MemoryBudget is budget.MemoryBudget
    assert memwise.spawn is actors.spawn
    assert memwise.Sessions is sessions.Sessions
    assert memwise.BrokenPool is errors.BrokenPool
    for name in memwise.__all__:
        assert getattr(memwise, name) is not None


def test_dir_lists_the_exports():
    listed = dir(memwise)
    assert set(memwise.__all__) <= set(listed)
    assert listed == sorted(listed)


def test_an_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        memwise.no_such_thing  # noqa: B018
    assert not hasattr(memwise, "NoSuchExport")
    with pytest.raises(ImportError):
        from memwise import NoSuchExport  # noqa: F401
