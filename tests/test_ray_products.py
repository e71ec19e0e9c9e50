"""Pipelines and data products on ``WorkerPool(backend="ray")``, unchanged, on a real cluster.

A pipeline's process stage runs in the pool's actors and yields what the local pool yields,
in order; frames from a shared ``BufferPool`` reach the actors as copies (through Ray's object
store) and every lease comes back. A data product's chunks are computed in the actors and
stored in a directory, equal to the local result.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

import _data_plugins as plugins
import _pipeline_tasks as tasks
import _ray
from memwise import WorkerPool
from memwise.buffers import BufferPool
from memwise.data import Context, Registry
from memwise.pipeline import Pipeline

pytestmark = [
    pytest.mark.timeout(240),  # room for a second start of the local cluster on a loaded machine
    pytest.mark.skipif(not _ray.installed(), reason="Ray is not installed (the 'ray' extra)"),
]

FRAME = (512, 1024)  # above Ray's 100 KB inline limit: frames go through the object store


@pytest.fixture(scope="module")
def ray_pool():
    """Two actors on a local cluster, shared by the module's tests (none kills a worker)."""
    with _ray.local_cluster(), WorkerPool(2, backend="ray") as pool:
        yield pool


def _line(pool: WorkerPool) -> list[object]:
    line = Pipeline(range(40))
    line.pipe(lambda x: x + 1, workers=2)
    line.pipe(functools.partial(tasks.fail_on, -1), pool=pool)
    line.pipe(tasks.square, pool=pool.options(key="one lane"))
    line.pipe(functools.partial(tasks.fail_on, -2), fuse=True)  # in the same task as square
    with line:
        return list(line)


def test_process_stages_on_actors_give_the_local_output_in_order(ray_pool) -> None:
    with WorkerPool(2) as local:
        expected = _line(local)
    assert expected == [(n + 1) ** 2 for n in range(40)]
    assert _line(ray_pool) == expected
    pids = {w.pid for w in ray_pool.snapshot().workers}
    assert os.getpid() not in pids and ray_pool.snapshot().done >= 80


@pytest.mark.parametrize("auto_release", [False, True])
def test_shared_frames_travel_as_copies_and_every_lease_comes_back(ray_pool, auto_release):
    with BufferPool(FRAME, np.uint8, size=3, shared=True) as buffers:

        def frames():
            for n in range(10):
                frame = buffers.acquire(timeout=60, auto_release=auto_release)
                frame[...] = n
                yield frame

        release = None if auto_release else buffers.release
        line = Pipeline(frames(), release=release).pipe(tasks.in_shared_memory, pool=ray_pool)
        with line:
            out = list(line)
        # Copies in the actors (not memwise's shared memory), with each frame's own content.
        assert out == [(False, n * FRAME[0] * FRAME[1]) for n in range(10)]
        del line, out
        assert buffers.available == buffers.size


PLUGIN_FILE = """
import os
import numpy as np
from memwise.data import Plugin

class Doubled(Plugin):
    provides = "doubled"
    depends_on = ("sums",)
    dtype = np.dtype([("time", np.int64), ("endtime", np.int64), ("total", np.int64)])

    def compute(self, sums):
        out = sums.copy()
        out["total"] *= 2
        return out
"""


def test_data_products_computed_on_actors_equal_the_local_ones(ray_pool, tmp_path: Path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "doubled.py").write_text(PLUGIN_FILE)
    log = tmp_path / "chunks.log"

    def context(store: str, pool: WorkerPool | None) -> Context:
        registry = Registry([plugins.Ticks, plugins.Sums, plugins.Split])
        # A plugin loaded from a file: the actors load it from its path, in the shared directory.
        registry.discover_directory(tmp_path / "plugins")
        config = {"chunks": 6, "log": str(log) if pool is ray_pool else ""}
        return Context(tmp_path / store, registry=registry, pool=pool, workers=2, config=config)

    inline = Context(
        tmp_path / "inline", plugins=[plugins.Ticks, plugins.Sums, plugins.Split], workers=0,
        config={"chunks": 6},
    )  # fmt: skip
    on_ray = context("store", ray_pool)
    for name in ("sums", "odds"):
        chunks = list(on_ray.get_iter("r", name))
        assert [(c.start, c.end) for c in chunks] == [(i * 1000, i * 1000 + 1000) for i in range(6)]
        np.testing.assert_array_equal(on_ray.get_array("r", name), inline.get_array("r", name))
    doubled = on_ray.get_array("r", "doubled")
    np.testing.assert_array_equal(doubled["total"], 2 * inline.get_array("r", "sums")["total"])
    # Every chunk was computed in an actor, none in this process.
    computed = [line.split() for line in log.read_text().splitlines() if line.startswith("ticks")]
    assert sorted(int(i) for i, _ in (c[1:] for c in computed)) == list(range(6))
    assert {int(pid) for *_, pid in computed} <= {w.pid for w in ray_pool.snapshot().workers}
    # Stored in the directory: another context (no pool at all) reads it back, computing nothing.
    reader = context("store", None)
    np.testing.assert_array_equal(reader.get_array("r", "doubled"), doubled)
    assert reader.stats["computed"] == 0 and reader.stats["loaded"] >= 1
