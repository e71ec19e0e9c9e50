"""Kill storms and poison tasks: workers SIGKILLed under load lose nothing.

Small versions of ``memwise bench chaos``'s experiments (same code, see
``memwise.benchmarks.chaos``): thousands of tasks while busy workers are killed at the times of
a Poisson process.
"""

from __future__ import annotations

import pytest

from memwise.benchmarks import chaos

# Each storm restarts workers dozens of times: on a loaded machine that takes a while.
pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024


def test_with_retries_every_task_of_a_storm_completes_with_the_right_result():
    figures = chaos.kill_storm(tasks=1000, rate=4.0, retries=4, work_s=0.002)
    assert figures.kills > 0, "the storm never hit a busy worker"
    assert figures.hung == 0
    assert figures.wrong == 0
    assert not figures.other_errors
    assert figures.completed == figures.tasks
    assert figures.descriptors_grown <= 0


def test_with_large_arrays_every_task_of_a_storm_completes():
    figures = chaos.kill_storm(tasks=200, rate=4.0, retries=4, array_bytes=2 * MiB, work_s=0.01)
    assert figures.kills > 0
    assert (figures.hung, figures.wrong, dict(figures.other_errors)) == (0, 0, {})
    assert figures.completed == figures.tasks


def test_without_retries_each_lost_task_fails_alone_with_worker_crashed():
    figures = chaos.kill_storm(tasks=600, rate=4.0, retries=0, work_s=0.003)
    assert figures.kills > 0
    assert (figures.hung, figures.wrong, dict(figures.other_errors)) == (0, 0, {})
    # Every kill costs at most the one task its worker was running.
    assert 0 < figures.crashed <= figures.kills
    assert figures.completed + figures.crashed == figures.tasks


def test_a_poison_task_fails_after_a_bounded_number_of_crashes_and_the_rest_complete():
    outcome = chaos.poison(retries=2, healthy=200)
    assert outcome["error"] == "WorkerCrashed"
    assert "3 time" in outcome["message"]  # tried retries + 1 times, and says so
    assert outcome["crashes"] == 3
    assert outcome["healthy_completed"] == outcome["healthy"]
    assert outcome["pool_state"] in ("running", "shut down")


def test_the_storm_guard_never_breaks_a_healthy_pool_whose_tasks_are_killed():
    # Many kills in a short time, but tasks keep succeeding between them: not a storm.
    figures = chaos.kill_storm(tasks=600, rate=15.0, retries=8, work_s=0.002)
    assert figures.kills >= 5
    assert figures.completed == figures.tasks
    assert not figures.other_errors  # in particular, no BrokenPool


def test_an_actor_whose_process_is_killed_answers_every_call_or_fails_it_alone():
    figures = chaos.actor_storm(calls=200, rate=4.0)
    assert figures["kills"] > 0
    outcomes = figures["outcomes"]
    assert "hung" not in outcomes and "wrong" not in outcomes
    assert set(outcomes) <= {"completed", "WorkerCrashed"}, outcomes
    assert figures["works_after"]


def test_a_pipeline_whose_process_stage_is_killed_delivers_every_item_in_order():
    figures = chaos.pipeline_storm(items=300, rate=4.0)
    assert figures["kills"] > 0
    assert figures["delivered"] == figures["items"]
    assert figures["in_order_and_right"]


def test_data_products_computed_on_killed_workers_equal_a_quiet_run():
    figures = chaos.data_storm(rate=0.5)
    assert figures["kills"] > 0
    assert figures["peaks"] > 0
    assert figures["same_as_quiet_run"]
