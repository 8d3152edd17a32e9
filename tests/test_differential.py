"""Differential tests: the same calls on multiprocessing.Pool(2) (fork) and
cpool.Pool(2) must give equal results and equal exceptions (type and args).

Both pools are module-scoped (started once); each call is bounded by a
timeout.  Outcomes are compared as ("ok", value) or ("err", type, args).
"""
import functools
import multiprocessing
import multiprocessing.pool
import operator
import threading

import pytest

import cpool
from conftest import shutdown

T = 30


# -- functions run in the workers ------------------------------------------------

def square(x):
    return x * x


def identity(x):
    return x


def describe(x):
    return type(x).__name__, repr(x)[:50], x


def add(*args):
    return sum(args)


def concat(a, b, sep="-"):
    return f"{a}{sep}{b}"


def length(x):
    return len(x)


class CustomError(Exception):
    pass


class CustomWithState(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


def fail_at(x):
    value, bad, kind = x
    if value == bad:
        if kind == "value":
            raise ValueError("value error at", value)
        if kind == "key":
            raise KeyError(value)
        if kind == "custom":
            raise CustomError(value, "custom")
        if kind == "state":
            raise CustomWithState(value, {"detail": [value]})
        if kind == "zero":
            return value / 0
    return value * 3


def return_lambda(_=None):
    return lambda: 0


def raise_unpicklable(_=None):
    raise ValueError(threading.Lock())


def raise_with_unpicklable_args(x):
    if x == 2:
        raise CustomError("has a lock", threading.Lock())
    return x


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pools():
    mp_pool = multiprocessing.get_context("fork").Pool(2)
    cp_pool = cpool.Pool(2, context="fork")
    try:
        yield mp_pool, cp_pool
    finally:
        for p in (mp_pool, cp_pool):
            p.terminate()
        mp_pool.join()
        shutdown(cp_pool)


def outcome(call):
    try:
        return ("ok", call())
    except multiprocessing.pool.MaybeEncodingError as e:
        return ("err", type(e))     # its args hold reprs with addresses
    except Exception as e:
        return ("err", type(e), e.args)


def both(pools, call):
    """outcome(call(pool)) on multiprocessing's pool and on cpool's."""
    mp_pool, cp_pool = pools
    return outcome(lambda: call(mp_pool)), outcome(lambda: call(cp_pool))


def drain(it, limit):
    """Outcomes of next(it) until StopIteration (at most `limit` calls)."""
    got = []
    for _ in range(limit):
        try:
            got.append(("ok", next(it)))
        except StopIteration:
            got.append(("stop",))
            break
        except Exception as e:
            got.append(("err", type(e), e.args))
    return got


# -- inputs ------------------------------------------------------------------------

MIXED = [None, 0, -5, 2 ** 70, 1.5, "text", "", b"bytes", (1, "a"), [1, [2]],
         {"k": [1, 2], "n": None}, {1, 2}, frozenset({3}), True, 3 + 4j]
BIG_LIST = [list(range(20_000))]
CASES = {
    "square-ints": (square, list(range(100))),
    "square-negative": (square, list(range(-30, 30, 7))),
    "identity-mixed": (identity, MIXED),
    "describe-mixed": (describe, MIXED),
    "identity-big-list": (identity, BIG_LIST),
    "length-big-list": (length, BIG_LIST * 3),
    "identity-many": (identity, list(range(5_000))),
    "upper-strings": (str.upper, ["abc", "Def", "", "x" * 1000]),
    "len-builtin": (len, ["a", "bb", (1, 2, 3), {}, {"a": 1}]),
    "partial-pow": (functools.partial(pow, 2), list(range(20))),
    "itemgetter": (operator.itemgetter("k"), [{"k": i} for i in range(10)]),
    "abs-builtin": (abs, [-1, 2, -3.5]),
}
STAR_CASES = {
    "add-tuples": (add, [(1, 2), (3, 4, 5), (), (6,)]),
    "concat": (concat, [("a", "b"), ("x", "y", "+"), ("", "")]),
    "divmod": (divmod, [(7, 2), (-7, 2), (10, 3)]),
}
CHUNKSIZES = [1, 3, None]


# -- results ------------------------------------------------------------------------

@pytest.mark.parametrize("chunksize", CHUNKSIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_map(pools, case, chunksize):
    func, data = CASES[case]
    mp_out, cp_out = both(pools, lambda p: p.map_async(func, data, chunksize).get(T))
    assert cp_out == mp_out
    assert mp_out[0] == "ok"


RANGES = [range(0), range(7), range(-30, 30, 7), range(100, -100, -3),
          range(10 ** 18, 10 ** 18 + 50), range(5_000)]


@pytest.mark.parametrize("chunksize", [1, 4, None])
@pytest.mark.parametrize("r", RANGES, ids=repr)
def test_map_range_input(pools, r, chunksize):
    # cpool sends a range as range slices, not as pickled items: the same
    # items must reach the function.
    mp_out, cp_out = both(pools, lambda p: p.map(describe, r, chunksize))
    assert cp_out == mp_out == ("ok", [describe(x) for x in r])
    mp_out, cp_out = both(pools, lambda p: p.starmap(add, r, chunksize))
    assert cp_out[:2] == mp_out[:2]  # [] or TypeError (an int is no tuple)


@pytest.mark.parametrize("case", sorted(CASES))
def test_map_generator_input(pools, case):
    func, data = CASES[case]
    mp_out, cp_out = both(pools, lambda p: p.map(func, (x for x in data)))
    assert cp_out == mp_out


@pytest.mark.parametrize("chunksize", CHUNKSIZES)
@pytest.mark.parametrize("case", sorted(STAR_CASES))
def test_starmap(pools, case, chunksize):
    func, data = STAR_CASES[case]
    mp_out, cp_out = both(pools,
                          lambda p: p.starmap_async(func, data, chunksize).get(T))
    assert cp_out == mp_out
    assert mp_out[0] == "ok"


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_imap(pools, case, chunksize):
    func, data = CASES[case]
    mp_out, cp_out = both(pools, lambda p: list(p.imap(func, data, chunksize)))
    assert cp_out == mp_out


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_imap_unordered_sorted(pools, case, chunksize):
    func, data = CASES[case]
    mp_out, cp_out = both(pools, lambda p: sorted(
        map(repr, p.imap_unordered(func, data, chunksize))))
    assert cp_out == mp_out


@pytest.mark.parametrize("case", sorted(CASES))
def test_apply(pools, case):
    func, data = CASES[case]
    mp_out, cp_out = both(pools, lambda p: [p.apply_async(func, (x,)).get(T)
                                            for x in data[:20]])
    assert cp_out == mp_out


def test_apply_kwds(pools):
    mp_out, cp_out = both(pools, lambda p: [
        p.apply(concat, ("a",), {"b": "c"}),
        p.apply(concat, (), {"a": 1, "b": 2, "sep": ":"}),
        p.apply(add),
    ])
    assert cp_out == mp_out


@pytest.mark.parametrize("method", ["map", "imap", "starmap"])
def test_empty_input(pools, method):
    def call(p):
        if method == "starmap":
            return p.starmap(add, [])
        return list(getattr(p, method)(square, []))
    mp_out, cp_out = both(pools, call)
    assert cp_out == mp_out


def test_map_async_callbacks_receive_equal_values(pools):
    got = {}
    for p in pools:
        seen = []
        p.map_async(describe, MIXED, 2, callback=seen.append).get(T)
        p.map_async(square, [], callback=seen.append).get(T)
        p.starmap_async(add, [(1, 2), (3,)], callback=seen.append).get(T)
        p.apply_async(square, (12,), callback=seen.append).get(T)
        got[type(p).__module__] = seen
    mp_seen, cp_seen = got.values()
    assert cp_seen == mp_seen


# -- exceptions -------------------------------------------------------------------------

KINDS = ["value", "key", "custom", "state", "zero"]


@pytest.mark.parametrize("chunksize", CHUNKSIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_map_exception(pools, kind, chunksize):
    data = [(i, 7, kind) for i in range(20)]
    mp_out, cp_out = both(pools, lambda p: p.map_async(fail_at, data, chunksize).get(T))
    assert cp_out == mp_out
    assert mp_out[0] == "err"


@pytest.mark.parametrize("kind", KINDS)
def test_apply_exception(pools, kind):
    mp_out, cp_out = both(pools, lambda p: p.apply_async(fail_at, ((1, 1, kind),)).get(T))
    assert cp_out == mp_out
    assert mp_out[0] == "err"


@pytest.mark.parametrize("kind", KINDS)
def test_error_callback_receives_equal_exception(pools, kind):
    got = []
    for p in pools:
        errs = []
        r = p.apply_async(fail_at, ((2, 2, kind),), error_callback=errs.append)
        outcome(lambda: r.get(T))
        got.append([(type(e), e.args) for e in errs])
    assert got[1] == got[0]
    assert len(got[0]) == 1


def test_exception_attributes_survive(pools):
    got = []
    for p in pools:
        try:
            p.apply_async(fail_at, ((5, 5, "state"),)).get(T)
        except CustomWithState as e:
            got.append((e.code, e.args, type(e.__cause__)))
    assert len(got) == 2 and got[0] == got[1]


def test_imap_exception_chunksize_1(pools):
    data = [(i, 4, "key") for i in range(10)]
    mp_pool, cp_pool = pools
    mp_out = drain(mp_pool.imap(fail_at, data), 20)
    cp_out = drain(cp_pool.imap(fail_at, data), 20)
    assert cp_out == mp_out


def test_imap_chunked_ends_at_failed_chunk_as_multiprocessing(pools):
    """With chunksize > 1, multiprocessing's imap is a generator that ends at
    the first failed chunk; code catching the error and calling next() again
    sees StopIteration there."""
    data = [(i, 4, "value") for i in range(12)]
    mp_pool, cp_pool = pools
    mp_out = drain(mp_pool.imap(fail_at, data, 3), 20)
    cp_out = drain(cp_pool.imap(fail_at, data, 3), 20)
    assert cp_out == mp_out


def test_imap_input_raising(pools):
    def source():
        yield from range(3)
        raise CustomError("the input broke")

    mp_pool, cp_pool = pools
    mp_out = drain(mp_pool.imap(square, source()), 10)
    cp_out = drain(cp_pool.imap(square, source()), 10)
    assert cp_out == mp_out


@pytest.mark.parametrize("func", [return_lambda, raise_unpicklable])
@pytest.mark.parametrize("how", ["apply", "map1", "map3"])
def test_unpicklable_result_or_exception(pools, func, how):
    def call(p):
        if how == "apply":
            return p.apply_async(func, (1,)).get(T)
        return p.map_async(func, range(6), 1 if how == "map1" else 3).get(T)
    mp_out, cp_out = both(pools, call)
    assert cp_out == mp_out
    assert mp_out == ("err", multiprocessing.pool.MaybeEncodingError)
    # both pools still work
    mp_out, cp_out = both(pools, lambda p: p.map_async(square, range(5)).get(T))
    assert cp_out == mp_out


def test_exception_with_unpicklable_args_in_map(pools):
    mp_out, cp_out = both(pools, lambda p: p.map_async(
        raise_with_unpicklable_args, range(5), 1).get(T))
    assert cp_out == mp_out


def test_unpicklable_argument(pools):
    def call(p):
        return p.apply_async(identity, (threading.Lock(),)).get(T)
    mp_out, cp_out = both(pools, call)
    assert cp_out == mp_out
    assert mp_out[0] == "err"
    mp_out, cp_out = both(pools, lambda p: p.map_async(
        identity, [1, threading.Lock()]).get(T))
    assert cp_out == mp_out
    mp_out, cp_out = both(pools, lambda p: p.apply_async(square, (9,)).get(T))
    assert cp_out == mp_out == ("ok", 81)


def test_bad_imap_chunksize(pools):
    mp_out, cp_out = both(pools, lambda p: p.imap(square, [1], 0))
    assert cp_out[:2] == mp_out[:2]


def test_pickling_the_pool(pools):
    import pickle
    mp_out, cp_out = both(pools, lambda p: pickle.dumps(p))
    assert cp_out[:2] == mp_out[:2]


def test_lifecycle_errors():
    """close/join/terminate misuse raises the same types on both."""
    def scenario(Pool):
        out = []
        p = Pool(1)
        out.append(outcome(p.join)[:2])              # join while running
        p.close()
        out.append(outcome(lambda: p.apply(square, (1,)))[:2])
        out.append(outcome(lambda: p.map(square, [1]))[:2])
        out.append(outcome(lambda: p.imap(square, [1]))[:2])
        out.append(outcome(p.join)[:2])
        out.append(outcome(p.terminate)[:2])
        with Pool(1) as q:
            out.append(outcome(lambda: q.map(square, [2]))[:2])
        out.append(outcome(lambda: q.map(square, [2]))[:2])
        q.join()
        return out

    mp_out = scenario(multiprocessing.get_context("fork").Pool)
    cp_out = scenario(cpool.Pool)
    assert cp_out == mp_out
