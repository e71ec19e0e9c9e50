"""WorkerPool holds to the documented ``concurrent.futures.Executor`` contract.

Written from the Python documentation of ``concurrent.futures`` (Executor, Future, wait,
as_completed, ProcessPoolExecutor), for both start methods a pool uses: forkserver (the Linux
default) and spawn (elsewhere).
"""

from __future__ import annotations

import weakref

import pytest

import _contract_tasks as tasks
from memwise import WorkerPool

pytestmark = pytest.mark.timeout(60)

METHODS = ["forkserver", "spawn"]


@pytest.fixture(scope="module", params=METHODS)
def pool(request):
    """One healthy 2-worker pool per start method, shared by the non-destructive tests."""
    with WorkerPool(2, start_method=request.param) as pool:
        yield pool


# -- references released --------------------------------------------------------------------


def _alive_after_drop(results) -> int:
    alive = 0
    for obj in results:
        ref = weakref.ref(obj)
        del obj  # no reference cycles: the object goes now unless something else holds it
        alive += ref() is not None
    return alive


def test_map_releases_each_result_once_yielded(pool):
    # Whole chunks arrive at once; the items the caller has consumed must not stay in them.
    assert _alive_after_drop(pool.map(tasks.box, range(12), chunksize=4)) == 0


def test_imap_releases_each_result_once_yielded(pool):
    assert _alive_after_drop(pool.imap(tasks.box, range(12))) == 0
    assert _alive_after_drop(pool.imap(tasks.box, range(12), ordered=False)) == 0
