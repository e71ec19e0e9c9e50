"""``await pool.run(fn, *args)``: the pool from asyncio, without blocking the event loop."""

from __future__ import annotations

import asyncio
import os

import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import WorkerCrashed

pytestmark = pytest.mark.timeout(45)


async def wait_for_file(path, timeout: float = WAIT) -> None:
    """Like ``_tasks.wait_for``, but yields to the event loop while it waits."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not os.path.exists(path):
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.005)


def test_run_returns_the_result(shared_pool):
    async def main():
        return await shared_pool.run(_tasks.add, 2, y=40)

    assert asyncio.run(main()) == 42


def test_run_many_concurrently(shared_pool):
    async def main():
        return await asyncio.gather(*(shared_pool.run(_tasks.square, i) for i in range(50)))

    assert asyncio.run(main()) == [i * i for i in range(50)]


def test_run_raises_the_task_exception(shared_pool):
    async def main():
        await shared_pool.run(_tasks.raise_custom, "async trouble")

    with pytest.raises(_tasks.CustomError, match="async trouble"):
        asyncio.run(main())


def test_run_does_not_block_the_event_loop(shared_pool, tmp_path):
    release = tmp_path / "release"

    async def releaser():
        # Runs only if the loop is free while the task below is awaited.
        await wait_for_file(tmp_path / "pid")
        _tasks.write_atomic(release, "")
        return "released"

    async def main():
        return await asyncio.gather(
            shared_pool.run(_tasks.block, tmp_path / "pid", release), releaser()
        )

    pid, message = asyncio.run(main())
    assert message == "released"
    assert pid == _tasks.read_pid(tmp_path / "pid")


def test_cancelling_the_coroutine_cancels_a_queued_task(tmp_path):
    release = tmp_path / "release"

    async def main(pool):
        blocker = asyncio.ensure_future(pool.run(_tasks.block, tmp_path / "pid", release))
        await wait_for_file(tmp_path / "pid")
        # The only worker is busy, so this task is queued.
        queued = asyncio.ensure_future(pool.run(_tasks.touch, tmp_path / "queued-ran"))
        while pool.snapshot().submitted < 2:  # until run() has submitted it
            await asyncio.sleep(0.001)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        _tasks.write_atomic(release, "")
        await blocker
        # On one worker tasks run in order: once this one is done, the cancelled one would
        # have run too, had it not been cancelled.
        return await pool.run(_tasks.square, 7)

    with WorkerPool(1) as pool:
        assert asyncio.run(main(pool)) == 49
    assert not (tmp_path / "queued-ran").exists()


def test_cancelling_the_coroutine_of_a_running_task(tmp_path):
    release = tmp_path / "release"

    async def main(pool):
        running = asyncio.ensure_future(pool.run(_tasks.block, tmp_path / "pid", release))
        await wait_for_file(tmp_path / "pid")
        # The awaiting coroutine is cancelled at once, although the task cannot be stopped.
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        _tasks.write_atomic(release, "")
        # The task completes in its worker and the pool goes on.
        return await pool.run(_tasks.getpid)

    with WorkerPool(1) as pool:
        assert asyncio.run(main(pool)) == _tasks.read_pid(tmp_path / "pid")


def test_wait_for_timeout_around_run(tmp_path):
    release = tmp_path / "release"

    async def main(pool):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.run(_tasks.block, tmp_path / "pid", release), 0.2)
        _tasks.write_atomic(release, "")
        return await pool.run(_tasks.square, 3)

    with WorkerPool(1) as pool:
        assert asyncio.run(main(pool)) == 9


def test_run_reports_a_crash(tmp_path):
    async def main(pool):
        with pytest.raises(WorkerCrashed, match="exit code 9"):
            await pool.run(_tasks.exit_with, 9)
        return await pool.run(_tasks.square, 4)

    with WorkerPool(1) as pool:
        assert asyncio.run(main(pool)) == 16
