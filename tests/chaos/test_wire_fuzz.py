"""Random payloads through the wire: the result equals the input, or the error is typed.

Nested containers holding arrays of every dtype and layout (C, Fortran, strided, 0-d, empty,
structured, some large enough to travel through shared-memory slots), members that cannot be
pickled, and exceptions with custom ``__reduce__``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memwise import WorkerPool
from memwise.benchmarks import _faults
from memwise.errors import RemoteError, SerializationError

WAIT = 60.0
DTYPES = [
    np.dtype(name)
    for name in (
        "bool",
        "int8",
        "uint16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex128",
        "U5",
        "S3",
        "datetime64[ns]",
        "timedelta64[ms]",
    )
] + [np.dtype([("a", "<i4"), ("b", "<f8", (2,))])]
SLOT_SIZES = (1 << 20) + 8  # just past the default out-of-band threshold


@pytest.fixture
def pool():
    # Per test, not per module: a slot lent to an idle worker comes back with its next message,
    # so the leak check after each test needs the pool's shutdown to settle every slot.
    with WorkerPool(2) as pool:
        yield pool


# The pool fixture is shared by the examples of one test on purpose: it is reusable.
FUZZ = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    array = draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
    layout = draw(st.sampled_from(["C", "F", "strided", "empty", "large"]))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return array[::2]
    if layout == "empty":
        return np.empty((0, 3), dtype=dtype)
    if layout == "large":
        return np.resize(array.reshape(-1), SLOT_SIZES // dtype.itemsize + 1)
    return array


leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=64)
    | arrays()
)
payloads = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)  # type: ignore[arg-type]
            and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=60, deadline=None, suppress_health_check=FUZZ)
@given(payload=payloads)
def test_a_payload_comes_back_equal(pool, payload):
    assert same(pool.submit(_faults.identity, payload).result(WAIT), payload)


@settings(max_examples=15, deadline=None, suppress_health_check=FUZZ)
@given(payload=payloads, where=st.sampled_from(["argument", "result"]))
def test_an_unpicklable_member_fails_that_future_with_a_typed_error(pool, payload, where):
    poisoned = [payload, {"lock": threading.Lock()}]
    if where == "argument":
        future = pool.submit(_faults.identity, poisoned)
    else:
        future = pool.submit(_faults.make_unpicklable, payload)
    with pytest.raises(SerializationError):
        future.result(WAIT)
    assert pool.submit(_faults.identity, payload).result(WAIT) is not None or payload is None


def test_an_exception_with_a_custom_reduce_comes_back_as_itself(pool):
    with pytest.raises(_faults.CodedError) as caught:
        pool.submit(_faults.raise_error, _faults.CodedError(7, "seven")).result(WAIT)
    assert (caught.value.code, caught.value.detail) == (7, "seven")


def test_an_exception_that_cannot_be_rebuilt_comes_back_as_remote_error(pool):
    with pytest.raises(RemoteError) as caught:
        pool.submit(_faults.raise_unrebuildable, 7, "x").result(WAIT)
    assert caught.value.type_name == "UnrebuildableError"
