"""The parent↔worker messages survive encoding, and the worker's fast Done encoder agrees."""

from __future__ import annotations

import pytest

from memwise.pool import _protocol as wire
from memwise.pool.policies import Recycle

pytestmark = pytest.mark.timeout(30)

MESSAGES = [
    wire.Init(b"init", wire.InitOptions(None, 1 << 20, Recycle(tasks=3), True, False, True)),
    wire.Run([wire.TaskEntry(7, b"call", ()), wire.TaskEntry(8, b"other", ("h",))], ("slot",), 3),
    wire.Stop(),
    wire.Ready(1234),
    wire.InitError(b"exc", "running the initializer"),
    wire.Done(7, wire.OK, b"value", 0.5, ("gift",), ["returned"], 1 << 20, None),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_itself(message: object) -> None:
    decoded = wire.decode(bytearray(wire.encode(message)))
    assert type(decoded) is type(message)
    assert decoded == message
    if isinstance(message, wire.Run):
        assert all(type(entry) is wire.TaskEntry for entry in decoded.tasks)


@pytest.mark.parametrize(
    "fields",
    [
        (7, wire.OK, b"value", 0.25, (), [], None, None),
        (9, wire.RAISED, b"error", 1.5, ("gift",), ["slot"], 123, 456),
    ],
)
def test_the_fast_done_encoder_writes_what_encode_writes(fields: tuple) -> None:
    assert wire.encode_done(*fields) == wire.encode(wire.Done(*fields))
    assert wire.decode(wire.encode_done(*fields)) == wire.Done(*fields)
