"""Pipeline stages on WorkerPool processes: zero-copy frames, crashes with retries, stop."""

from __future__ import annotations

import functools
import sys
import threading

import numpy as np
import pytest

import _pipeline_tasks as tasks
from memwise import WorkerPool
from memwise.buffers import BufferPool
from memwise.errors import WorkerCrashed
from memwise.pipeline import ItemError, Pipeline

# At least the pool's shm_threshold (1 MiB by default): smaller buffers are pickled inline.
FRAME = (1024, 1024)


def _pipeline_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("memwise-pipeline") and t.is_alive()
    ]


def _frames(buffers: BufferPool, count: int):
    for n in range(count):
        frame = buffers.acquire(timeout=30)
        frame[...] = n % 7
        yield frame


def test_shared_frames_cross_processes_as_handles(shared_pool: WorkerPool) -> None:
    with BufferPool(FRAME, np.uint8, size=4, shared=True) as buffers:
        line = Pipeline(_frames(buffers, 12), release=buffers.release)
        line.pipe(tasks.in_shared_memory, pool=shared_pool)
        with line:
            out = list(line)
        assert out == [(True, (n % 7) * FRAME[0] * FRAME[1]) for n in range(12)]
        assert buffers.available == buffers.size  # every frame given back
        assert buffers.stats().peak_in_use <= 4


def test_two_stages_share_one_pool_and_threads_mix_in(shared_pool: WorkerPool) -> None:
    line = Pipeline(range(20))
    line.pipe(functools.partial(tasks.fail_on, -1), pool=shared_pool)
    line.pipe(lambda x: x + 1, workers=2)
    line.pipe(tasks.square, pool=shared_pool)
    with line:
        assert list(line) == [(n + 1) ** 2 for n in range(20)]
        kinds = [stage.kind for stage in line.snapshot().stages]
    assert kinds == ["pool", "threads", "pool"]


def test_remote_error_at_its_position(shared_pool: WorkerPool) -> None:
    line = Pipeline(range(10), errors="record")
    line.pipe(functools.partial(tasks.fail_on, 4), pool=shared_pool, name="check")
    with line:
        out = list(line)
    assert isinstance(out[4], ItemError) and out[4].stage == "check"
    assert isinstance(out[4].error, KeyError)
    assert out[:4] + out[5:] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_killed_process_stage_reruns_the_item_per_retries(tmp_path) -> None:
    stage = functools.partial(tasks.crash_once, str(tmp_path / "crashed"))
    with WorkerPool(2, retries=1) as pool, Pipeline(range(8)).pipe(stage, pool=pool) as line:
        assert list(line) == [n * n for n in range(8)]
    assert (tmp_path / "crashed").exists()  # a worker really died on item 3


def test_killed_process_stage_without_retries_fails_that_item(tmp_path) -> None:
    stage = functools.partial(tasks.crash_once, str(tmp_path / "crashed"))
    with WorkerPool(2) as pool, Pipeline(range(8)).pipe(stage, pool=pool) as line:
        got = []
        with pytest.raises(WorkerCrashed):
            for x in line:
                got.append(x)
    assert got == [0, 1, 4]


def test_stop_mid_stream_releases_every_frame_and_thread() -> None:
    with BufferPool(FRAME, np.uint8, size=6, shared=True) as buffers:
        with WorkerPool(2) as pool:
            line = Pipeline(_frames(buffers, 1000), release=buffers.release)
            line.pipe(tasks.in_shared_memory, pool=pool, capacity=3)
            line.pipe(lambda result: result[1], workers=2)
            with line:
                for n, _ in enumerate(line):
                    if n == 5:
                        break
            assert not _pipeline_threads()
        # The pool has ended: tasks running at stop have finished and given their frame back.
        assert buffers.available == buffers.size


def test_a_shut_down_pool_fails_the_item_visibly() -> None:
    pool = WorkerPool(1)
    pool.shutdown()
    line = Pipeline(range(3), errors="record").pipe(tasks.square, pool=pool)
    with line:
        out = list(line)
    assert len(out) == 3 and all(isinstance(record, ItemError) for record in out)


def test_fused_stages_run_as_one_task_per_item(shared_pool: WorkerPool) -> None:
    submitted = []

    class Counting:
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(fn)
            return shared_pool.submit(fn, *args, **kwargs)

    counting = Counting()
    line = Pipeline(range(10), errors="record")
    line.pipe(tasks.square, pool=counting, workers=2)
    line.pipe(functools.partial(tasks.fail_on, 49), fuse=True, name="check")
    line.pipe(lambda x: x + 1)
    with line:
        out = list(line)
        stages = line.snapshot().stages
    assert [stage.name for stage in stages] == ["square+check", "<lambda>"]
    assert len(submitted) == 10  # one task per item, not one per fused stage
    assert out[:7] == [n * n + 1 for n in range(7)] and out[8:] == [65, 82]
    error = out[7]
    assert isinstance(error, ItemError) and error.index == 7 and error.stage == "square+check"
    assert isinstance(error.error, KeyError)
    if sys.version_info >= (3, 11):  # exceptions have notes
        assert any("'check'" in note for note in error.error.__notes__)


def test_fuse_needs_a_previous_stage_on_the_same_pool(shared_pool: WorkerPool) -> None:
    line = Pipeline(range(3))
    with pytest.raises(ValueError, match="must run on a pool"):
        line.pipe(tasks.square, fuse=True)
    line.pipe(tasks.square)
    with pytest.raises(ValueError, match="must run on a pool"):
        line.pipe(tasks.square, fuse=True)
    line = Pipeline(range(3)).pipe(tasks.square, pool=shared_pool)
    with pytest.raises(ValueError, match="same pool"):
        line.pipe(tasks.square, pool=object(), fuse=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers and capacity"):
        line.pipe(tasks.square, workers=2, fuse=True)
    line.pipe(tasks.square, pool=shared_pool, fuse=True)
    with line:
        assert list(line) == [0, 1, 16]
