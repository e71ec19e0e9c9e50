"""The one shape of a benchmark's targets: value, target text, met, checked against that value."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from memwise.benchmarks import recycle, transfer
from memwise.benchmarks._harness import at_least, at_most, exactly, print_targets


def test_bounds_check_the_value_they_carry() -> None:
    assert at_most(29.6, 30, "MiB") == {"value": 29.6, "target": "<= 30 MiB", "met": True}
    assert at_most(30.1, 30, "MiB")["met"] is False
    assert at_least(1.2, 1.5, "x pebble") == {
        "value": 1.2,
        "target": ">= 1.5x pebble",
        "met": False,
    }
    assert exactly(0, 0) == {"value": 0, "target": "== 0", "met": True}
    assert exactly(2, 0)["met"] is False


def test_a_missing_figure_is_a_target_not_met() -> None:
    for target in (at_most(None, 1), at_least(None, 1), exactly(None, 0)):
        assert target["value"] is None
        assert target["met"] is False


def test_a_bool_is_not_a_value() -> None:
    with pytest.raises(TypeError, match="int"):
        exactly(True, 1)  # type: ignore[arg-type]
    assert exactly(int(True), 1)["met"] is True


def test_printed_targets_say_met_missed_and_no_figure() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    print_targets({"a": at_most(1, 2), "b": at_least(1, 2), "c": exactly(None, 0)}, console)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("target met: a: 1 ")
    assert lines[1].startswith("target missed: b: 1 ")
    assert lines[2] == "target missed: c: no figure (target == 0)"


def test_every_named_target_is_there_without_figures() -> None:
    # A run whose systems all failed still names every target, each unmet.
    for targets in (recycle.targets({}, limit=64 * 1024 * 1024), transfer.targets({})):
        assert targets
        assert all(t["value"] is None and not t["met"] for t in targets.values())
    assert set(transfer.targets({})) == set(_transfer_names())


def _transfer_names() -> list[str]:
    # The same names a run with every system produces.
    figures = {m.key: 1.0 for m in transfer.METRICS}
    systems = (transfer.SUBJECT, transfer.SLOT_SUBJECT, transfer.IN_PROCESS, transfer.RAY)
    return list(transfer.targets(dict.fromkeys(systems, figures)))
