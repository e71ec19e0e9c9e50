"""Task functions for the Executor contract tests (module level, so every start method pickles
them)."""

from __future__ import annotations

from typing import Any


class Box:
    """A result that can be watched with a weak reference once the caller has it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def box(value: Any) -> Box:
    return Box(value)
