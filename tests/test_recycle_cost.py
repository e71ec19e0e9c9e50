"""What ``bench recycle`` states as its bound: the CPU of a process tree, reaped processes
included, and the bound's arithmetic."""

from __future__ import annotations

import subprocess
import sys

import pytest

from memwise.benchmarks._recycle_cost import cpu_between, recycle_bound, recycle_floor, tree_cpu
from memwise.pool.context import get_context

pytestmark = pytest.mark.timeout(120)

_BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_the_cpu_of_a_child_that_exited_is_counted() -> None:
    before = tree_cpu()
    subprocess.run([sys.executable, "-c", _BURN], check=True)
    spent = cpu_between(before, tree_cpu())
    assert spent >= 0.3  # the child's burn, reaped by this process, plus its start-up


def test_a_recycle_floor_has_a_start_and_an_exit() -> None:
    floor = recycle_floor(get_context(None), heap_bytes=8 << 20, piece_bytes=1 << 20, rounds=1)
    assert floor["start_ms"] > 0
    assert floor["exit_ms"] > 0


def _figures(tasks_per_s: float, cpu_ms: float, recycles: float) -> dict[str, float]:
    return {
        "tasks_per_s": tasks_per_s,
        "cpu_ms_per_task": cpu_ms,
        "sampler_cpu_ms_per_task": 0.0,
        "cores_used": 2.0,
        "cores_spare": 0.0,
        "recycles": recycles,
    }


def test_the_bound_is_the_cpu_share_left_to_tasks_on_saturated_cores() -> None:
    results = {"mine": _figures(300, 6.0, 10), "plain": _figures(400, 4.0, 0)}
    floor = {"start_ms": 10.0, "exit_ms": 10.0}
    bound = recycle_bound(results, "mine", "plain", tasks=100, floor=floor)
    # 0.1 recycles per task at 20 ms each: 2 ms on top of a 4 ms task.
    assert bound["cpu_share_bound"] == pytest.approx(4 / 6)
    assert bound["ratio_bound"] == pytest.approx(4 / 6)
    assert bound["mine_vs_bound"] == pytest.approx(300 / (400 * 4 / 6))
    assert bound["mine_recycle_cpu_ms"] == pytest.approx(20.0)


def test_spare_cores_loosen_the_bound_but_never_past_one() -> None:
    plain = _figures(400, 4.0, 0) | {"cores_used": 1.0, "cores_spare": 0.2}
    results = {"mine": _figures(300, 6.0, 10), "plain": plain}
    floor = {"start_ms": 10.0, "exit_ms": 10.0}
    bound = recycle_bound(results, "mine", "plain", tasks=100, floor=floor)
    assert bound["ratio_bound"] == pytest.approx(1.2 * 4 / 6)
    plain["cores_spare"] = 1.0
    assert recycle_bound(results, "mine", "plain", tasks=100, floor=floor)["ratio_bound"] == 1.0
