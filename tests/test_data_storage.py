"""One contract, both storage backends: what every Storage must do."""

from __future__ import annotations

import numpy as np
import pytest

from _data_plugins import TICK_DTYPE, ticks
from memwise.data import Chunk, DataKey, DirectoryStorage, SQLiteStorage, Storage
from memwise.data.storage.base import dtype_to_json
from memwise.errors import DataNotFound, LockTimeout

pytestmark = pytest.mark.timeout(60)

KEY = DataKey("run1", "ticks", "0123456789abcdef0123")
META = {"dtype": dtype_to_json(TICK_DTYPE), "lineage": {"plugin": "Ticks"}}


@pytest.fixture(params=["directory", "sqlite"])
def storage(request, tmp_path) -> Storage:
    if request.param == "directory":
        return DirectoryStorage(tmp_path / "store")
    return SQLiteStorage(tmp_path / "store.sqlite")


def chunks() -> list[Chunk]:
    return [Chunk(ticks(i * 1000, n), i * 1000, (i + 1) * 1000) for i, n in enumerate([5, 0, 9])]


def test_save_load_roundtrip(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert not storage.exists(KEY)
    storage.save(KEY, chunks(), META)
    assert storage.exists(KEY)
    loaded = list(storage.load(KEY))
    assert [(c.start, c.end, len(c)) for c in loaded] == [
        (0, 1000, 5),
        (1000, 2000, 0),
        (2000, 3000, 9),
    ]
    for got, want in zip(loaded, chunks(), strict=True):
        assert got.data.dtype == TICK_DTYPE
        np.testing.assert_array_equal(got.data, want.data)
    assert storage.metadata(KEY)["lineage"] == {"plugin": "Ticks"}
    assert storage.size(KEY) == 14 * TICK_DTYPE.itemsize
    assert storage.keys() == [KEY]


def test_delete(storage: Storage) -> None:
    storage.save(KEY, chunks(), META)
    storage.delete(KEY)
    assert not storage.exists(KEY)
    assert storage.keys() == []
    with pytest.raises(DataNotFound):
        storage.metadata(KEY)
    with pytest.raises(DataNotFound):
        storage.delete(KEY)


def test_streaming_writer_is_invisible_until_finalized(storage: Storage) -> None:
    with storage.lock(KEY, timeout=10):
        writer = storage.writer(KEY, META)
        for chunk in chunks():
            writer.write(chunk)
            assert not storage.exists(KEY)
            assert storage.keys() == []
        writer.finalize()
    assert storage.exists(KEY)
    assert sum(len(c) for c in storage.load(KEY)) == 14


def test_finalize_all_publishes_its_own_writers_together(storage: Storage, tmp_path) -> None:
    other_key = DataKey("run1", "sums", KEY.lineage)
    writers = [storage.writer(KEY, META), storage.writer(other_key, META)]
    for writer in writers:
        writer.write(chunks()[0])
    foreign = DirectoryStorage(tmp_path / "foreign").writer(other_key, META)
    with pytest.raises(TypeError, match="is not a writer of"):
        storage.finalize_all([*writers, foreign])  # refused before anything is visible
    foreign.abort()
    assert storage.keys() == []
    storage.finalize_all(writers)
    assert storage.keys() == sorted([KEY, other_key])


def test_abort_and_clean_leave_nothing(storage: Storage) -> None:
    writer = storage.writer(KEY, META)
    writer.write(chunks()[0])
    writer.abort()
    assert not storage.exists(KEY)
    # A writer that died without aborting: the next writer's clean() removes its leftovers.
    dead = storage.writer(KEY, META)
    dead.write(chunks()[0])
    storage.clean(KEY)
    storage.save(KEY, chunks(), META)
    assert storage.keys() == [KEY]
    assert sum(len(c) for c in storage.load(KEY)) == 14


def test_key_lock_is_exclusive(storage: Storage) -> None:
    with storage.lock(KEY, timeout=10), pytest.raises(LockTimeout, match="another process"):
        storage.lock(KEY, timeout=0.05).acquire()
    with storage.lock(KEY, timeout=0.05):  # released: free again
        pass


def test_missing_key(storage: Storage) -> None:
    with pytest.raises(DataNotFound):
        list(storage.load(KEY))


def test_load_array_is_the_whole_product(storage: Storage) -> None:
    storage.save(KEY, chunks(), META)
    whole = storage.load_array(KEY)
    np.testing.assert_array_equal(whole, np.concatenate([c.data for c in chunks()]))
    assert not whole.flags.writeable
