"""Chunks: range checks, re-cutting to a target size, and the k-way merge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _data_plugins import TICK_DTYPE
from memwise.data import Chunk, merge_sorted, rechunk
from memwise.errors import PluginError

pytestmark = pytest.mark.timeout(60)


def items(times: list[int], length: int = 1) -> np.ndarray:
    out = np.zeros(len(times), TICK_DTYPE)
    out["time"] = sorted(times)
    out["endtime"] = out["time"] + length
    out["value"] = np.arange(len(times))
    return out


sorted_arrays = st.lists(
    st.lists(st.integers(0, 50), max_size=30).map(lambda ts: items(ts)), min_size=1, max_size=6
)


@settings(max_examples=80, deadline=None)
@given(sorted_arrays)
def test_merge_sorted_equals_a_stable_sort(arrays: list[np.ndarray]) -> None:
    for i, a in enumerate(arrays):
        a["value"] = i * 1000 + np.arange(len(a))  # remember where each item came from
    merged = merge_sorted(arrays)
    together = np.concatenate(arrays)
    expected = together[np.argsort(together["time"], kind="stable")]
    np.testing.assert_array_equal(merged, expected)


def test_merge_sorted_refuses_mixed_dtypes() -> None:
    other = np.zeros(1, [("time", np.int64), ("endtime", np.int64)])
    with pytest.raises(ValueError, match="one dtype"):
        merge_sorted([items([1]), other])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=12),
    st.integers(1, 30),
)
def test_rechunk_keeps_every_item_and_cuts_near_the_target(sizes: list[int], target: int) -> None:
    chunks = []
    for i, n in enumerate(sizes):
        start = i * 1000
        chunks.append(Chunk(items([start + 10 * k for k in range(n)], 5), start, start + 1000))
    target_bytes = target * TICK_DTYPE.itemsize
    out = list(rechunk(iter(chunks), target_bytes))
    np.testing.assert_array_equal(
        np.concatenate([c.data for c in out]), np.concatenate([c.data for c in chunks])
    )
    assert out[0].start == 0 and out[-1].end == len(sizes) * 1000
    for before, after in itertools.pairwise(out):
        assert before.end == after.start
    assert all(c.nbytes >= target_bytes for c in out[:-1])


def test_chunk_refuses_items_outside_its_range() -> None:
    with pytest.raises(PluginError, match="inside its chunk"):
        Chunk(items([5, 20], length=10), 0, 25)
    with pytest.raises(ValueError, match="before it starts"):
        Chunk(items([]), 10, 0)


def test_concatenate_needs_touching_chunks() -> None:
    with pytest.raises(ValueError, match="do not touch"):
        Chunk.concatenate([Chunk(items([1]), 0, 10), Chunk(items([15]), 11, 20)])
