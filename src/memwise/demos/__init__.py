"""The seed scenarios, each a runnable ``memwise demo NAME`` on real data.

Every scenario module exposes one function::

    def run(*, short: bool, console: rich.console.Console) -> Scenario

``short=True`` is the form the tour (``memwise demo`` with no name) runs: every scenario in a
few tens of seconds on 2 cores. ``short=False`` is the full size. A scenario checks its seed's
own acceptance bar and reports it in the returned :class:`Scenario`; it never downloads
anything and never needs a system package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Name -> module, in the order the tour runs them.
SCENARIOS: dict[str, str] = {
    "photos": "memwise.demos.photos",
    "preview": "memwise.demos.preview",
    "covers": "memwise.demos.covers",
    "vision": "memwise.demos.vision",
    "waveforms": "memwise.demos.waveforms",
    "speech": "memwise.demos.speech",
}


@dataclass(frozen=True)
class Scenario:
    """What one scenario run checked and measured."""

    name: str
    checked: str  # what was checked, in a few words ("57/57 photos graded despite a kill")
    passed: bool
    figure: str  # the key figure, formatted ("3.1 s, 2 workers")
    details: dict[str, Any] = field(default_factory=dict)


def run(name: str, *, short: bool, console: Console) -> Scenario:
    """Run one scenario by name."""
    try:
        module = SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ValueError(f"no scenario named {name!r}; choose one of: {known}") from None
    result: Scenario = importlib.import_module(module).run(short=short, console=console)
    return result
