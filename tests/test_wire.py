"""What crosses between processes comes back the same: types, values and
sharing.  Plain data (exact None/bool/int/float/complex/str/bytes and
tuples, lists, dicts of them) travels as marshal, everything else as a
protocol-5 pickle; the choice must never show."""
import enum
import math

import pytest

import cpool

T = 60


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


def identity(x):
    return x


def shape(x):
    """What the worker received, described from the inside."""
    if isinstance(x, list) and len(x) == 2:
        return type(x[0]).__name__, x[0] is x[1]
    return type(x).__name__, repr(x)


@pytest.fixture(scope="module")
def pool():
    p = cpool.Pool(2)
    yield p
    p.terminate()
    p.join()


PLAIN = [None, True, False, 0, -1, 2 ** 100, -(2 ** 70), 1.5, -0.0, float("inf"),
         3 + 4j, "", "text", "\udc80 surrogate", "é" * 300, b"", b"\x00" * 1000,
         (), (1, (2, (3,))), [], [1, [2, [3]]], {"a": 1, 2: [3]}, {(1, 2): "t"}]
NOT_PLAIN = [bytearray(b"ba"), Color.RED, MyStr("s"), {1, 2}, frozenset({3}),
             [bytearray(b"x")], ({"k": bytearray(b"v")},), [[[[[["deep"]]]]]],
             memoryview(b"mv").tobytes(), range(3)]


@pytest.mark.parametrize("value", PLAIN + NOT_PLAIN, ids=repr)
def test_values_cross_unchanged(pool, value):
    for got in (pool.apply(identity, (value,)),
                pool.map(identity, [value] * 3, chunksize=3)[1],
                next(pool.imap(identity, [value]))):
        assert type(got) is type(value)
        assert got == value or (got != got and value != value)
        assert repr(got) == repr(value)


def test_nan_and_signed_zero(pool):
    got = pool.map(identity, [[float("nan"), -0.0]] * 4)
    assert all(math.isnan(a) and math.copysign(1, b) == -1 for a, b in got)


def test_sharing_within_a_chunk_survives(pool):
    inner = [1, 2]
    shared = [inner, inner]          # plain: marshal keeps the sharing
    ba = bytearray(b"x")
    shared_pickled = [ba, ba]        # not plain: pickle keeps it too
    assert pool.apply(shape, (shared,)) == ("list", True)
    assert pool.apply(shape, (shared_pickled,)) == ("bytearray", True)
    out = pool.apply(identity, (shared,))
    assert out[0] is out[1]
    chunk = pool.map(identity, [shared] * 4, chunksize=4)
    assert all(c[0] is c[1] for c in chunk)


def test_a_large_plain_chunk_and_result(pool):
    # over the inline limit: the chunk and the result go through segments
    items = [(i, str(i), i * 0.5, None) for i in range(50_000)]
    assert pool.map(identity, items, chunksize=25_000) == items
    assert pool.starmap(max, [(i, -i) for i in range(100_000)]) == \
        [i for i in range(100_000)]
