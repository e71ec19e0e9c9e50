"""The parent↔worker messages survive encoding, and the worker's fast Done encoder agrees."""

from __future__ import annotations

import pytest

from memwise.pool._protocol import (
    OK,
    RAISED,
    Done,
    Init,
    InitError,
    InitOptions,
    Ready,
    Run,
    Stop,
    TaskEntry,
    decode,
    encode,
    encode_done,
)
from memwise.pool.policies import Recycle

pytestmark = pytest.mark.timeout(30)

MESSAGES = [
    Init(b"init", InitOptions(None, 1 << 20, Recycle(tasks=3), True, False, True)),
    Run([TaskEntry(7, b"call", ()), TaskEntry(8, b"other", ("h",))], ("slot",), 3),
    Stop(),
    Ready(1234),
    InitError(b"exc", "running the initializer"),
    Done(7, OK, b"value", 0.5, ("gift",), ["returned"], 1 << 20, None),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_itself(message: object) -> None:
    decoded = decode(bytearray(encode(message)))
    assert type(decoded) is type(message)
    assert decoded == message
    if isinstance(message, Run):
        assert all(type(entry) is TaskEntry for entry in decoded.tasks)


@pytest.mark.parametrize(
    "fields",
    [
        (7, OK, b"value", 0.25, (), [], None, None),
        (9, RAISED, b"error", 1.5, ("gift",), ["slot"], 123, 456),
    ],
)
def test_the_fast_done_encoder_writes_what_encode_writes(fields: tuple) -> None:
    assert encode_done(*fields) == encode(Done(*fields))
    assert decode(encode_done(*fields)) == Done(*fields)
