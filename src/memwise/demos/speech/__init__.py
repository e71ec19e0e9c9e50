"""Seed 004: an offline speech recognition server on memwise (``memwise demo speech``).

Modules: ``audio`` (the 16 kHz PCM the recognizer takes; the shipped recordings),
``segments`` (overlapping segments and the ordered merge), ``recognizer`` (pocketsphinx,
one per worker), ``memcheck`` (the start-up memory check), ``service`` (sticky per-file
dispatch, crash policy, resize), ``app`` and ``serve`` (the HTTP/WebSocket server),
``batch`` (many files at once, measured), ``scenario`` (the demo). See docs/speech.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from memwise.demos import Scenario


def run(*, short: bool, console: Console) -> Scenario:
    """The scenario; see :mod:`memwise.demos.speech.scenario`."""
    from memwise.demos.speech import scenario

    return scenario.run(short=short, console=console)
