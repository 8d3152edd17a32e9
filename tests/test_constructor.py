"""Pool's constructor arguments: processes, initializer and initargs (an
initializer that raises breaks the pool with InitializerError),
maxtasksperchild, context; the values each rejects."""
import multiprocessing
import os
import time

import pytest

import cpool
from conftest import START_METHODS, shutdown
from tasks import T, square


# -- functions run in the workers (module level: pickled by reference) --------

_INIT_VALUE = None


def set_init_value(*values):
    global _INIT_VALUE
    _INIT_VALUE = values


def get_init_value(_=None):
    return _INIT_VALUE, os.getpid()


def failing_initializer():
    raise OSError("initializer failed on purpose")


def getpid(_=None):
    return os.getpid()


# -- constructor arguments ----------------------------------------------------

@pytest.mark.parametrize("method", START_METHODS)
def test_initializer_initargs(method):
    p = cpool.Pool(2, initializer=set_init_value, initargs=("hello", 5), context=method)
    try:
        results = p.map(get_init_value, range(8), chunksize=1)
        assert {v for v, _ in results} == {("hello", 5)}
        assert _INIT_VALUE is None  # it ran in the workers only
        assert os.getpid() not in {pid for _, pid in results}
    finally:
        shutdown(p)


def test_initializer_list_initargs():
    p = cpool.Pool(1, set_init_value, [1, 2])
    try:
        assert p.apply(get_init_value)[0] == (1, 2)
    finally:
        shutdown(p)


@pytest.mark.parametrize("method", START_METHODS)
def test_failing_initializer_breaks_pool(method):
    p = cpool.Pool(2, initializer=failing_initializer, context=method)
    try:
        r = p.apply_async(square, (2,))
        with pytest.raises(cpool.InitializerError) as info:
            r.get(timeout=T)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.args == ("initializer failed on purpose",)
        deadline = time.monotonic() + T
        while p._core.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(cpool.InitializerError):
            p.apply_async(square, (2,)).get(timeout=T)
    finally:
        shutdown(p)


def test_maxtasksperchild():
    p = cpool.Pool(2, maxtasksperchild=1)
    try:
        pids = [p.apply(getpid) for _ in range(6)]
        assert len(set(pids)) > 2
        assert os.getpid() not in pids
        # and map still gives correct results while workers are replaced
        assert p.map(square, range(20), 1) == [square(i) for i in range(20)]
    finally:
        shutdown(p)


def test_maxtasksperchild_larger():
    p = cpool.Pool(1, maxtasksperchild=3)
    try:
        pids = [p.apply(getpid) for _ in range(9)]
        assert len(set(pids)) == 9 // 3
        assert [pids[i] for i in range(0, 9, 3)] == [pids[i + 2] for i in range(0, 9, 3)]
    finally:
        shutdown(p)


@pytest.mark.parametrize("n", [0, -1])
def test_processes_must_be_positive(n):
    with pytest.raises(ValueError):
        cpool.Pool(n)


@pytest.mark.parametrize("m", [0, -1, "x", 1.5])
def test_maxtasksperchild_invalid(m):
    with pytest.raises(ValueError):
        cpool.Pool(1, maxtasksperchild=m)


def test_initializer_not_callable():
    with pytest.raises(TypeError):
        cpool.Pool(1, initializer=3)


def test_default_processes():
    p = cpool.Pool()
    try:
        assert len(p._pool) == len(os.sched_getaffinity(0))
        assert all(w.pid and w.is_alive() for w in p._pool)
    finally:
        shutdown(p)


@pytest.mark.parametrize("context", [None, *START_METHODS, *(f"{m}-ctx" for m in START_METHODS)])
def test_context_accepted(context):
    if context is not None and context.endswith("-ctx"):
        context = multiprocessing.get_context(context[:-4])
    p = cpool.Pool(1, context=context)
    try:
        assert p.apply(square, (4,)) == 16
        method = context if context is None or isinstance(context, str) \
            else context.get_start_method()
        assert p._start_method == (method or "fork")
    finally:
        shutdown(p)


@pytest.mark.parametrize("context,error", [("bogus", ValueError), ("", ValueError),
                                           (42, TypeError)])
def test_context_rejected(context, error):
    with pytest.raises(error) as info:
        cpool.Pool(1, context=context)
    assert repr(context) in str(info.value)
