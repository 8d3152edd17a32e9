"""apply and apply_async: arguments and keywords, callbacks, and the
AsyncResult they return (get with a timeout, wait, ready, successful)."""
import multiprocessing
import time

import pytest

import cpool
from cpool import pool as cpool_pool
from tasks import T, square, add3, kw_echo, sleep_then, raise_value_error


def test_apply_args_and_kwds(pool):
    assert pool.apply(add3, (1, 2), {"c": 3}) == add3(1, 2, c=3)
    assert pool.apply(add3, (5,)) == add3(5)
    assert pool.apply(kw_echo, (), {"x": 1}) == kw_echo(x=1)
    assert pool.apply(kw_echo) == kw_echo()
    assert pool.apply(square, [7]) == square(7)


def test_apply_kwds_any_mapping(pool):
    import types
    kw = types.MappingProxyType({"b": 4, "c": 5})
    assert pool.apply(add3, (1,), kw) == add3(1, **kw)


def test_apply_async_callback(pool):
    got = []
    r = pool.apply_async(add3, (2, 3), callback=got.append)
    assert r.get(timeout=T) == add3(2, 3)
    assert got == [add3(2, 3)]
    assert r.ready() and r.successful()


def test_apply_async_error_callback(pool):
    ok, errs = [], []
    r = pool.apply_async(raise_value_error, (5,), callback=ok.append,
                         error_callback=errs.append)
    with pytest.raises(ValueError) as info:
        r.get(timeout=T)
    assert ok == []
    assert len(errs) == 1 and errs[0] is info.value
    assert info.value.args == ("bad value", 5)
    assert r.ready() and not r.successful()


def test_apply_async_get_timeout(pool):
    r = pool.apply_async(sleep_then, (1.0, "late"))
    t0 = time.monotonic()
    with pytest.raises(cpool.TimeoutError) as info:
        r.get(timeout=0.1)
    assert time.monotonic() - t0 < 0.9
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert issubclass(cpool.TimeoutError, multiprocessing.TimeoutError)
    assert not r.ready()
    # the result still arrives after a timed-out get
    assert r.get(timeout=T) == "late"


def test_apply_async_wait_ready_successful(pool):
    r = pool.apply_async(sleep_then, (0.5, 11))
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    assert r.wait(0.05) is None
    assert not r.ready()
    r.wait(T)
    assert r.ready()
    assert r.successful() is True
    assert r.get(timeout=0) == 11
    assert r.get() == 11  # repeatable


def test_async_result_types():
    assert cpool_pool.AsyncResult is cpool_pool.ApplyResult
    assert cpool_pool.AsyncResult[int] is cpool_pool.AsyncResult


def test_many_apply_async(pool):
    rs = [pool.apply_async(square, (i,)) for i in range(500)]
    assert [r.get(timeout=T) for r in rs] == [square(i) for i in range(500)]
    assert pool._cache == {}
