"""Racing processes compute a product once; a writer killed mid-write leaves nothing visible."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from _data_plugins import SUM_DTYPE, Split, Sums, Ticks, digest, race_main, ticks
from memwise.data import Context, DataKey, DirectoryStorage, SQLiteStorage, Storage

pytestmark = pytest.mark.timeout(60)

RACERS = 8
CHUNKS = 6
WAIT_S = 40.0


def expected_sums() -> np.ndarray:
    t = np.concatenate([ticks(i * 1000, 50) for i in range(CHUNKS)])
    out = np.zeros(len(t), SUM_DTYPE)
    out["time"], out["endtime"], out["total"] = t["time"], t["endtime"], t["value"]
    return out


def make_storage(backend: str, tmp_path: Path) -> tuple[Storage, str]:
    if backend == "directory":
        return DirectoryStorage(tmp_path / "store"), str(tmp_path / "store")
    return SQLiteStorage(tmp_path / "store.sqlite"), str(tmp_path / "store.sqlite")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("backend", ["directory", "sqlite"])
def test_racing_processes_compute_once_and_read_whole(backend: str, tmp_path: Path) -> None:
    storage, root = make_storage(backend, tmp_path)
    log, out = tmp_path / "log", tmp_path / "out"
    # Forked, so that they start at once and with nothing to import.
    fork = multiprocessing.get_context("fork")
    go = fork.Event()
    racers = [
        fork.Process(target=race_after, args=(go, root, backend, str(log), str(out)))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    try:
        go.set()
        for racer in racers:
            racer.join(WAIT_S)
            assert racer.exitcode == 0
    finally:
        for racer in racers:
            if racer.is_alive():
                racer.kill()
                racer.join()
    computed = [line for line in lines(log) if line.startswith("ticks")]
    assert len(computed) == CHUNKS, computed  # every chunk computed once, by one process
    assert len({line.split()[2] for line in computed}) == 1
    assert lines(out) == [digest(expected_sums())] * RACERS  # nobody read a partial product
    assert [k.name for k in storage.keys()] == ["sums", "ticks"]  # noqa: SIM118


@pytest.mark.parametrize("backend", ["directory", "sqlite"])
def test_sigkill_mid_write_leaves_nothing_visible(backend: str, tmp_path: Path) -> None:
    storage, root = make_storage(backend, tmp_path)
    log = tmp_path / "log"
    writer = multiprocessing.get_context("fork").Process(
        target=stalling_writer, args=(root, backend, str(log))
    )
    writer.start()
    try:
        wait_for(lambda: "stalled" in lines(log), "the writer to reach chunk 2")
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
    assert writer.exitcode == -signal.SIGKILL
    assert storage.keys() == []  # two chunks were written, none of them is visible
    assert staged(storage) > 0  # ... they are there, staged where readers never look
    ctx = Context(storage, plugins=[Ticks, Sums], workers=0, config={"chunks": CHUNKS})
    assert not ctx.is_stored("crash", "sums")
    np.testing.assert_array_equal(ctx.get_array("crash", "sums"), expected_sums())
    assert ctx.is_stored("crash", "sums") and ctx.is_stored("crash", "ticks")
    assert staged(storage) == 0  # the next writer cleaned up after the dead one


class RefusingDirectory(DirectoryStorage):
    """A directory whose folder for one output cannot be renamed into place, as when the
    file system refuses a rename: its ``path`` then lies under a folder that does not exist."""

    refused = ""

    def path(self, key: DataKey) -> Path:
        if key.name == self.refused:
            return self.root / "no-such-folder" / str(key)
        return super().path(key)


class RefusingSQLite(SQLiteStorage):
    """A database that refuses to record one output, by a trigger (a real SQLite error)."""

    refused = ""

    def refuse(self, name: str) -> None:
        with self.connection() as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON products "
                f"WHEN NEW.key LIKE '%-{name}-%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )

    def allow(self) -> None:
        with self.connection() as db:
            db.execute("DROP TRIGGER refuse")


@pytest.mark.parametrize("backend", ["directory", "sqlite"])
def test_failed_finalize_of_one_output_publishes_none(backend: str, tmp_path: Path) -> None:
    storage: DirectoryStorage | SQLiteStorage
    if backend == "directory":
        storage = RefusingDirectory(tmp_path / "store")
        storage.refused, error = "odds", OSError
    else:
        storage = RefusingSQLite(tmp_path / "store.sqlite")
        storage.refuse("odds")
        error = sqlite3.IntegrityError
    ctx = Context(storage, plugins=[Ticks, Split], workers=0, config={"chunks": CHUNKS})
    # Written in key order, evens, odds, ticks: the second output's finalize fails.
    with pytest.raises(error):
        ctx.get_array("r", "evens")
    assert not ctx.is_stored("r", "evens") and not ctx.is_stored("r", "odds")
    assert not ctx.is_stored("r", "ticks")  # the whole computation, not only Split's outputs
    assert storage.keys() == [] and staged(storage) == 0
    if isinstance(storage, RefusingDirectory):
        storage.refused = ""
    else:
        storage.allow()
    evens = ctx.get_array("r", "evens")  # the next run computes and stores all of them
    assert ctx.stats["computed"] == 3
    assert ctx.is_stored("r", "evens") and ctx.is_stored("r", "odds")
    odds, all_ticks = ctx.get_array("r", "odds"), ctx.get_array("r", "ticks")
    assert ctx.stats["computed"] == 3  # odds and ticks were loaded, not computed again
    assert len(all_ticks) == CHUNKS * 50 == len(evens) + len(odds)
    assert (evens["value"] % 2 == 0).all() and (odds["value"] % 2 == 1).all()


@pytest.mark.parametrize("mode", ["none", "process"])
@pytest.mark.parametrize("backend", ["directory", "sqlite"])
def test_abandoned_stream_stores_no_output(
    backend: str, mode: str, tmp_path: Path, shared_pool
) -> None:
    storage, _ = make_storage(backend, tmp_path)
    workers = 0 if mode == "none" else 2
    config = {"chunks": CHUNKS}
    ctx = Context(storage, plugins=[Ticks, Split], workers=workers, pool=shared_pool, config=config)
    stream = ctx.get_iter("r", "odds")
    first = next(stream)
    assert staged(storage) == 3  # evens, odds and ticks are being written
    stream.close()  # the caller stops reading midway
    assert storage.keys() == [] and staged(storage) == 0  # every writer was aborted
    assert not ctx.is_stored("r", "evens") and not ctx.is_stored("r", "odds")
    # Locks and the re-entrancy guard were released: the next request computes everything.
    odds = ctx.get_array("r", "odds")
    np.testing.assert_array_equal(odds[: len(first)], first.data)
    assert ctx.is_stored("r", "evens") and ctx.is_stored("r", "ticks")
    assert ctx.stats["computed"] == 3


def race_after(go, root: str, backend: str, log: str, out: str) -> None:
    go.wait(WAIT_S)
    race_main(root, backend, log, out)


def stalling_writer(root: str, backend: str, log: str) -> None:
    storage = DirectoryStorage(root) if backend == "directory" else SQLiteStorage(root)
    config = {"log": log, "chunks": CHUNKS, "stall_at": 2}
    Context(storage, plugins=[Ticks, Sums], workers=0, config=config).get_array("crash", "sums")


def staged(storage: Storage) -> int:
    """How many staged (not yet visible) pieces the storage holds."""
    if isinstance(storage, DirectoryStorage):
        staging = storage.root / ".staging"
        return len(list(staging.iterdir())) if staging.exists() else 0
    assert isinstance(storage, SQLiteStorage)
    row = storage.connection().execute("SELECT count(*) FROM chunks WHERE key LIKE '~%'")
    return int(row.fetchone()[0])
