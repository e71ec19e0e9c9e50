"""The launcher: worker processes started on a thread of their own, picked up by the supervisor."""

from __future__ import annotations

import select

import pytest

from memwise.errors import SerializationError
from memwise.pool.context import get_context
from memwise.pool.launcher import Launched, Launcher, LaunchFailed

pytestmark = pytest.mark.timeout(120)

WAIT_S = 60.0  # a process start takes milliseconds; this only bounds a hung test


def _collect(launcher: Launcher, count: int) -> list[Launched | LaunchFailed]:
    outcomes: list[Launched | LaunchFailed] = []
    while len(outcomes) < count:
        readable, _, _ = select.select([launcher], [], [], WAIT_S)
        assert readable, "the launcher never reported"
        outcomes.extend(launcher.collect())
    return outcomes


def _end(launched: Launched) -> None:
    launched.process.kill()
    launched.process.join(WAIT_S)
    launched.process.close()
    launched.conn.close()
    launched.alive.close()


def test_processes_started_for_the_lanes_asked_in_order():
    launcher = Launcher(get_context(None), None)
    try:
        launcher.request(0)
        launcher.request(-1)
        assert launcher.pending() == [0, -1]
        outcomes = _collect(launcher, 2)
        assert [o.lane for o in outcomes] == [0, -1]
        assert launcher.pending() == []
        for outcome in outcomes:
            assert isinstance(outcome, Launched)
            assert outcome.process.is_alive()
            _end(outcome)
    finally:
        assert launcher.close() == []


def test_a_process_that_cannot_be_started_is_a_failure_for_its_lane():
    launcher = Launcher(get_context(None), (lambda: None,))  # plain pickle refuses a lambda
    try:
        launcher.request(3)
        (outcome,) = _collect(launcher, 1)
        assert isinstance(outcome, LaunchFailed) and outcome.lane == 3
        assert isinstance(outcome.error, SerializationError)
    finally:
        assert launcher.close() == []


def test_close_hands_back_what_was_started_and_drops_the_rest():
    launcher = Launcher(get_context(None), None)
    for lane in range(3):
        launcher.request(lane)
    left = launcher.close()  # the request in progress finishes; the others never start
    assert launcher.pending() == []
    assert len(left) <= 3 and all(isinstance(o, Launched) for o in left)
    for launched in left:
        _end(launched)
