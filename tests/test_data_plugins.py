"""Plugins, the registry and the Context: lineage, constraints, discovery, hooks, modes."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from _data_plugins import TICK_DTYPE, Both, Split, Sums, Ticks
from memwise.data import Context, Plugin, Registry
from memwise.errors import DependencyError, PluginError, ReentrantComputation

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(tmp_path / "store", plugins=[Ticks, Sums, Split, Both], workers=0)


def keys(ctx: Context) -> dict[str, str]:
    return {name: ctx.key_for("r", name).lineage for name in ("ticks", "sums")}


def test_lineage_follows_version_tracked_config_and_dependencies(ctx: Context) -> None:
    base = keys(ctx)
    ctx.set_config(log="/somewhere", chunk_delay=0.5)  # untracked: same data
    assert keys(ctx) == base
    ctx.set_config(scale=3)  # tracked by sums only
    scaled = keys(ctx)
    assert scaled["ticks"] == base["ticks"] and scaled["sums"] != base["sums"]
    ctx.set_config(scale=1, per_chunk=7)  # ticks changes, and so does what depends on it
    changed = keys(ctx)
    assert changed["ticks"] != base["ticks"] and changed["sums"] != base["sums"]
    ctx.set_config(per_chunk=50)
    assert keys(ctx) == base

    class SumsV2(Sums):
        version = "1.1.0"

    ctx.register(SumsV2)
    assert keys(ctx)["sums"] != base["sums"] and keys(ctx)["ticks"] == base["ticks"]


def test_source_tracking_makes_code_changes_new_data(tmp_path: Path) -> None:
    lineages = {}
    for variant, body in (("a", "t"), ("b", "t[::-1][::-1]")):
        folder = tmp_path / variant
        folder.mkdir()
        (folder / "tracked.py").write_text(
            PLUGIN_FILE.format(name="Tracked", provides="tracked", body=body, track=True)
        )
        registry = Registry()
        registry.discover_directory(folder)
        ctx = Context(tmp_path / "store", registry=registry, plugins=[Ticks], workers=0)
        lineages[variant] = ctx.key_for("r", "tracked").lineage
    assert lineages["a"] != lineages["b"]


def test_version_constraints(tmp_path: Path) -> None:
    class NeedsNewTicks(Plugin):
        provides = "picky"
        depends_on = ("ticks>=2.0",)
        dtype = TICK_DTYPE

    ctx = Context(tmp_path, plugins=[Ticks, NeedsNewTicks], workers=0)
    with pytest.raises(DependencyError, match=r"NeedsNewTicks needs 'ticks>=2.0' but Ticks"):
        ctx.key_for("r", "picky")

    class NewTicks(Ticks):
        version = "2.1.0"

    ctx.register(NewTicks)  # replaces Ticks: the constraint now holds
    assert ctx.key_for("r", "picky")
    with pytest.raises(PluginError, match="bad dependency"):
        Registry([type("Bad", (Sums,), {"depends_on": ("ticks>=>1",)})])
    with pytest.raises(PluginError, match="is not a version"):
        Registry([type("Bad", (Sums,), {"version": "one"})])


def test_missing_dependencies_and_cycles_are_named() -> None:
    class A(Plugin):
        provides = "a"
        depends_on = ("b",)
        dtype = TICK_DTYPE

    class B(Plugin):
        provides = "b"
        depends_on = ("a",)
        dtype = TICK_DTYPE

    registry = Registry([A])
    with pytest.raises(DependencyError, match="no plugin provides 'b'"):
        registry.plan("a")
    registry.register(B)
    with pytest.raises(DependencyError, match=r"cycle: .*A -> .*B -> .*A"):
        registry.plan("a")


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(PluginError, match="'time' field"):
        Registry([type("NoTime", (Plugin,), {"provides": "x", "dtype": np.dtype("f8")})])
    with pytest.raises(PluginError, match="give dtype as a dict"):
        Registry([type("Two", (Plugin,), {"provides": ("x", "y"), "dtype": TICK_DTYPE})])


def test_multi_output_computes_both_at_once(ctx: Context) -> None:
    evens = ctx.get_array("r", "evens")
    assert ctx.is_stored("r", "odds")  # the other output came with it
    odds = ctx.get_array("r", "odds")
    ticks = ctx.get_array("r", "ticks")
    assert len(evens) + len(odds) == len(ticks) > 0
    assert (evens["value"] % 2 == 0).all() and (odds["value"] % 2 == 1).all()
    np.testing.assert_array_equal(ctx.get_array("r", "both"), ticks)  # two inputs, re-merged
    assert ctx.stats["computed"] == 4  # ticks, evens, odds, both: each once


class Hooked(Sums):
    calls: ClassVar[list[str]] = []

    @classmethod
    def on_register(cls, registry: Any) -> None:
        cls.calls.append("on_register")

    @classmethod
    def on_unregister(cls, registry: Any) -> None:
        cls.calls.append("on_unregister")

    def setup(self) -> None:
        self.calls.append("setup")

    def teardown(self) -> None:
        self.calls.append("teardown")

    def validate_input(self, inputs: Any) -> None:
        self.calls.append("validate_input")

    def compute(self, **inputs: Any) -> np.ndarray:
        self.calls.append("compute")
        return super().compute(**inputs)

    def validate_output(self, outputs: Any) -> None:
        self.calls.append("validate_output")
        super().validate_output(outputs)


def test_hook_order(tmp_path: Path) -> None:
    Hooked.calls.clear()
    ctx = Context(tmp_path, plugins=[Ticks, Hooked], workers=0, config={"chunks": 2})
    ctx.get_array("r", "sums")
    ctx.registry.unregister("sums")
    chunk = ["validate_input", "compute", "validate_output"]
    assert Hooked.calls == ["on_register", "setup", *chunk, *chunk, "teardown", "on_unregister"]


def test_wrong_output_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    class Unsorted(Sums):
        def compute(self, **inputs: Any) -> np.ndarray:
            return super().compute(**inputs)[::-1]

    ctx = Context(tmp_path, plugins=[Ticks, Unsorted], workers=0)
    with pytest.raises(PluginError, match="not sorted by time"):
        ctx.get_array("r", "sums")
    assert not ctx.is_stored("r", "sums") and not ctx.is_stored("r", "ticks")
    assert not list((tmp_path / ".staging").iterdir())


def test_setup_and_teardown_once_in_each_process(tmp_path: Path) -> None:
    log = tmp_path / "log"
    config = {"log": str(log), "chunks": 6}
    with Context(tmp_path / "store", plugins=[Ticks], workers=2, config=config) as ctx:
        ctx.get_array("r", "ticks")  # chunk_ranges in this process, chunks in the workers
    notes = log.read_text().split("\n")
    workers = {line.split()[2] for line in notes if line.startswith("ticks")}
    setups = sorted(line.split()[1] for line in notes if line.startswith("setup"))
    teardowns = sorted(line.split()[1] for line in notes if line.startswith("teardown"))
    assert setups == teardowns == sorted({*workers, str(os.getpid())})


class Recursive(Sums):
    context: ClassVar[Context | None] = None

    def compute(self, **inputs: Any) -> np.ndarray:
        assert self.context is not None
        return self.context.get_array("r", "sums")


def test_reentrant_computation_is_refused(tmp_path: Path) -> None:
    ctx = Context(tmp_path, plugins=[Ticks, Recursive], workers=0)
    Recursive.context = ctx
    with pytest.raises(ReentrantComputation, match="already computing r/sums"):
        ctx.get_array("r", "sums")
    Recursive.context = None


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_parallel_modes_match_the_inline_result(mode: str, tmp_path: Path, shared_pool) -> None:
    inline = Context(tmp_path / "inline", plugins=[Ticks, Sums, Split], workers=0)
    Sums.parallel = Split.parallel = Ticks.parallel = mode  # type: ignore[misc]
    try:
        ctx = Context(tmp_path / mode, plugins=[Ticks, Sums, Split], workers=2, pool=shared_pool)
        for name in ("sums", "odds"):
            chunks = list(ctx.get_iter("r", name))
            assert [(c.start, c.end) for c in chunks] == [
                (i * 1000, i * 1000 + 1000) for i in range(4)
            ]
            np.testing.assert_array_equal(ctx.get_array("r", name), inline.get_array("r", name))
    finally:
        Sums.parallel = Split.parallel = Ticks.parallel = "process"  # type: ignore[misc]


PLUGIN_FILE = """
import numpy as np
from memwise.data import Plugin

class {name}(Plugin):
    provides = "{provides}"
    depends_on = ("ticks",)
    dtype = np.dtype([("time", np.int64), ("endtime", np.int64), ("value", np.int64)])
    track_source = {track}

    def compute(self, ticks):
        t = ticks
        return {body}
"""


def test_directory_discovery_reports_failures_and_runs_in_workers(
    tmp_path: Path, shared_pool
) -> None:
    (tmp_path / "good.py").write_text(
        PLUGIN_FILE.format(name="Copy", provides="copy", body="t", track=False)
    )
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    registry = Registry([Ticks])
    found = registry.discover_directory(tmp_path)
    assert [p.__qualname__ for p in found] == ["Copy"]
    assert list(registry.failed_plugins()) == [str(tmp_path / "broken.py")]
    assert "no_such_module_here" in registry.failed_plugins()[str(tmp_path / "broken.py")]
    # Workers never imported the file: they load it from its path.
    ctx = Context(tmp_path / "store", registry=registry, pool=shared_pool, workers=2)
    np.testing.assert_array_equal(ctx.get_array("r", "copy"), ctx.get_array("r", "ticks"))


def discover_in(path: str, out: str) -> None:
    sys.path.insert(0, path)
    registry = Registry()
    found = registry.discover_entry_points()
    Path(out).write_text(
        json.dumps({"found": [p.__qualname__ for p in found], "failed": registry.failed_plugins()})
    )


def test_entry_point_discovery_from_a_throwaway_distribution(tmp_path: Path) -> None:
    dist = tmp_path / "throwaway_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[memwise.plugins]\ncopy = throwaway_mod:Copy\nmissing = throwaway_gone:Nope\n"
    )
    (tmp_path / "throwaway_mod.py").write_text(
        PLUGIN_FILE.format(name="Copy", provides="copy", body="t", track=False)
    )
    out = tmp_path / "out.json"
    # A fresh (forked) process, so this one's sys.path and import caches stay as they were.
    child = multiprocessing.get_context("fork").Process(
        target=discover_in, args=(str(tmp_path), str(out))
    )
    child.start()
    child.join(50)
    assert child.exitcode == 0
    result = json.loads(out.read_text())
    assert result["found"] == ["Copy"]
    (where, error), *_ = result["failed"].items()
    assert "missing = throwaway_gone:Nope" in where and "throwaway_gone" in error
