"""``memwise demo covers``: seed 001's cover-render service, measured.

Kept light on purpose: worker processes import :mod:`.render` from this package, and the
service imports :mod:`.service`; neither should pay for the scenario's own imports (rich,
httpx, scikit-image), which live in :mod:`.scenario`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from memwise.demos import Scenario


def run(*, short: bool, console: Console) -> Scenario:
    """The scenario (see :mod:`memwise.demos.covers.scenario`)."""
    from memwise.demos.covers.scenario import run as run_scenario

    return run_scenario(short=short, console=console)
