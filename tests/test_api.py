"""cpool.Pool's public API: every method and parameter, its error cases, and
the documented differences from multiprocessing (lazy imap, WorkerLostError,
PoolTerminatedError, InitializerError, reported callback errors).

Everything that waits on a worker is bounded (get(timeout=...),
next(timeout=...), join_within); the conftest's hang guard catches the rest.
"""
import gc
import inspect
import itertools
import multiprocessing
import multiprocessing.pool
import os
import pickle
import signal
import sys
import threading
import time
import warnings

import pytest

import cpool
from cpool import pool as cpool_pool
from conftest import (START_METHODS, each_start_method, join_within, run_python, run_threads,
                      shutdown)
from procs import segment_fds, segments_mapped, shm_names, wait_gone, wait_not_running

T = 30  # seconds: the bound on every wait for a result


# -- functions run in the workers (module level: pickled by reference) -----

def square(x):
    return x * x


def add3(a, b=0, c=0):
    return a + b + c


def kw_echo(*args, **kwds):
    return args, kwds


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def sleep_then(delay, value=None):
    time.sleep(delay)
    return value


def sleepy_identity(pair):
    delay, value = pair
    time.sleep(delay)
    return value


def raise_value_error(x):
    raise ValueError("bad value", x)


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x * 10


def raise_marked():
    raise LookupError("marker raised in the worker", 42)


def return_lambda(_=None):
    return lambda: 0


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(T)


def exit_three(_=None):
    os._exit(3)


def report_pid_and_sleep(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(T)
    return "not killed"


def payload_len(b):
    return len(b), b[::-1]


_INIT_VALUE = None


def set_init_value(*values):
    global _INIT_VALUE
    _INIT_VALUE = values


def get_init_value(_=None):
    return _INIT_VALUE, os.getpid()


def failing_initializer():
    raise OSError("initializer failed on purpose")


# -- helpers ----------------------------------------------------------------

def expected_pickling_error(obj):
    """The exception type pickle raises for obj in this process."""
    try:
        pickle.dumps(obj)
    except Exception as e:
        return type(e)
    raise AssertionError(f"{obj!r} pickles")


def wait_for_file(path, timeout=T):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    with open(path) as f:
        return int(f.read())


# -- apply / apply_async ------------------------------------------------------

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


# -- map family ---------------------------------------------------------------

@pytest.mark.parametrize("chunksize", [None, 1, 2, 3, 7, 100, 10_000])
def test_map_chunksizes(pool, chunksize):
    data = list(range(257))
    assert pool.map(square, data, chunksize) == list(map(square, data))
    assert pool.map(square, data, chunksize=chunksize) == list(map(square, data))


def test_map_generator_and_other_iterables(pool):
    assert pool.map(square, (i for i in range(50))) == [square(i) for i in range(50)]
    assert pool.map(square, range(30)) == [square(i) for i in range(30)]
    assert pool.map(identity, "hello") == list("hello")
    assert pool.map(identity, {1: "a", 2: "b"}) == [1, 2]


def test_map_empty(pool):
    assert pool.map(square, []) == []
    assert pool.map(square, iter([])) == []
    got = []
    r = pool.map_async(square, [], callback=got.append)
    assert r.ready()
    assert r.get(timeout=T) == []
    assert pool.starmap(add3, []) == []
    # multiprocessing does not call the callback for an empty map either
    mp_got = []
    with multiprocessing.get_context("fork").Pool(1) as mpp:
        mpp.map_async(square, [], callback=mp_got.append).get(timeout=T)
    assert got == mp_got


def test_map_async_callback(pool):
    got = []
    r = pool.map_async(square, range(40), 3, callback=got.append)
    assert r.get(timeout=T) == [square(i) for i in range(40)]
    assert got == [[square(i) for i in range(40)]]
    assert r.successful()


def test_map_async_error_callback(pool):
    ok, errs = [], []
    r = pool.map_async(fail_on_three, range(10), 2, callback=ok.append,
                       error_callback=errs.append)
    with pytest.raises(KeyError) as info:
        r.get(timeout=T)
    assert info.value.args == (3,)
    assert ok == [] and len(errs) == 1 and errs[0] is info.value
    assert not r.successful()
    # the pool is fine afterwards
    assert pool.map(fail_on_three, [1, 2]) == [fail_on_three(1), fail_on_three(2)]


def test_map_raises_task_exception(pool):
    with pytest.raises(KeyError) as info:
        pool.map(fail_on_three, range(10))
    assert info.value.args == (3,)


def test_starmap(pool):
    data = [(1, 2), (3, 4, 5), (6,), (7, 8)]
    assert pool.starmap(add3, data) == [add3(*t) for t in data]
    assert pool.starmap(add3, data, chunksize=1) == [add3(*t) for t in data]
    assert pool.starmap(add3, iter(data), 3) == [add3(*t) for t in data]


def test_starmap_async(pool):
    got = []
    data = [(i, i + 1, i + 2) for i in range(25)]
    r = pool.starmap_async(add3, data, 4, callback=got.append)
    assert r.get(timeout=T) == [add3(*t) for t in data]
    assert got == [[add3(*t) for t in data]]
    errs = []
    r = pool.starmap_async(raise_value_error, [(1,), (2,)],
                           error_callback=errs.append)
    with pytest.raises(ValueError):
        r.get(timeout=T)
    assert len(errs) == 1 and isinstance(errs[0], ValueError)


def test_map_async_get_timeout(pool):
    r = pool.map_async(sleep_then, [0.8, 0.8])
    with pytest.raises(cpool.TimeoutError):
        r.get(timeout=0.05)
    assert r.get(timeout=T) == [None, None]


# -- imap / imap_unordered ----------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 2, 5, 1000])
def test_imap_order(pool, chunksize):
    # early items are the slowest: imap still yields in input order
    data = [(0.02 * (10 - i) if i < 10 else 0, i) for i in range(40)]
    it = pool.imap(sleepy_identity, data, chunksize)
    got = [it.next(timeout=T) for _ in range(len(data))]
    assert got == [v for _, v in data]
    with pytest.raises(StopIteration):
        it.next(timeout=T)


@pytest.mark.parametrize("chunksize", [1, 3, 1000])
def test_imap_unordered_all_results(pool, chunksize):
    data = list(range(60))
    it = pool.imap_unordered(square, data, chunksize)
    got = [it.next(timeout=T) for _ in data]
    assert sorted(got) == sorted(map(square, data))
    with pytest.raises(StopIteration):
        next(it)


def test_imap_unordered_is_completion_order(pool):
    # item 0 is slow; with 4 workers the fast ones complete first
    data = [(1.0, "slow")] + [(0, i) for i in range(3)]
    it = pool.imap_unordered(sleepy_identity, data)
    first = it.next(timeout=T)
    rest = [it.next(timeout=T) for _ in range(3)]
    assert first != "slow"
    assert sorted(map(str, [first] + rest)) == sorted(str(v) for _, v in data)


def test_imap_for_loop_and_generator_input(pool):
    assert list(pool.imap(square, (i for i in range(100)), 7)) == \
        [square(i) for i in range(100)]
    assert list(pool.imap(square, [])) == []
    assert list(pool.imap_unordered(square, [])) == []


def test_imap_next_timeout(pool):
    it = pool.imap(sleep_then, [1.0])
    with pytest.raises(cpool.TimeoutError) as info:
        it.next(timeout=0.1)
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert it.next(timeout=T) is None
    with pytest.raises(StopIteration):
        it.next(timeout=T)
    it = pool.imap_unordered(sleep_then, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    assert it.next(timeout=T) is None


def test_imap_bad_chunksize(pool):
    with pytest.raises(ValueError):
        pool.imap(square, [1], 0)
    with pytest.raises(ValueError):
        pool.imap_unordered(square, [1], -1)


def test_imap_exception_in_task(pool):
    it = pool.imap(fail_on_three, range(6))
    got = []
    for _ in range(6):
        try:
            got.append(it.next(timeout=T))
        except KeyError as e:
            got.append(("KeyError", e.args))
    assert got == [fail_on_three(i) if i != 3 else ("KeyError", (3,))
                   for i in range(6)]


def test_imap_endless_generator(pool):
    it = pool.imap(square, itertools.count())
    got = [it.next(timeout=T) for _ in range(50)]
    assert got == [square(i) for i in range(50)]
    it2 = pool.imap_unordered(square, itertools.count(), 5)
    got2 = [it2.next(timeout=T) for _ in range(50)]
    assert len(set(got2)) == 50
    # terminate (the fixture's teardown) must not try to drain the input


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_imap_reads_input_lazily(pool):
    pulled = 0
    total = 100_000

    def source():
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield i

    it = pool.imap(square, source(), 1)
    got = [it.next(timeout=T) for _ in range(10)]
    assert got == [square(i) for i in range(10)]
    assert pulled < 10 + 100, f"imap read {pulled} of {total} items for 10 results"


def test_imap_input_raising(pool):
    def source():
        yield 1
        yield 2
        raise ZeroDivisionError("input broke")

    it = pool.imap(square, source())
    assert it.next(timeout=T) == square(1)
    assert it.next(timeout=T) == square(2)
    with pytest.raises(ZeroDivisionError):
        it.next(timeout=T)
    with pytest.raises(StopIteration):
        it.next(timeout=T)


def test_imap_close_join_drains_lazy_input(pool):
    it = pool.imap(square, (i for i in range(300)))
    pool.close()
    assert join_within(pool)
    assert list(it) == [square(i) for i in range(300)]


def test_imap_terminate_fails_pending(pool):
    it = pool.imap(sleep_then, [T] * 3)
    time.sleep(0.1)
    pool.terminate()
    with pytest.raises(cpool.PoolTerminatedError):
        it.next(timeout=5)


# -- close / join / terminate / context manager -------------------------------

def test_join_before_close_raises(pool):
    with pytest.raises(ValueError):
        pool.join()
    assert pool.apply(square, (3,)) == 9  # still usable


def test_closed_pool_rejects_work(pool):
    r = pool.map_async(sleep_then, [0.3] * 4)
    pool.close()
    for call in (lambda: pool.apply(square, (1,)),
                 lambda: pool.apply_async(square, (1,)),
                 lambda: pool.map(square, [1]),
                 lambda: pool.map_async(square, [1]),
                 lambda: pool.starmap(add3, [(1, 2)]),
                 lambda: pool.starmap_async(add3, [(1, 2)]),
                 lambda: pool.imap(square, [1]),
                 lambda: pool.imap_unordered(square, [1])):
        with pytest.raises(ValueError):
            call()
    assert join_within(pool)
    # close() lets queued work finish
    assert r.ready() and r.get(timeout=0) == [None] * 4
    assert all(not w.is_alive() for w in pool._pool)


def test_close_then_join_twice(pool):
    pool.close()
    pool.close()
    assert join_within(pool)
    assert join_within(pool)


def test_terminate_returns_promptly():
    p = cpool.Pool(2)
    try:
        r = p.map_async(time.sleep, [30] * 4, chunksize=1)
        a = p.apply_async(time.sleep, (30,))
        time.sleep(0.3)
        assert not r.ready()
        t0 = time.monotonic()
        p.terminate()
        assert time.monotonic() - t0 < 5
        with pytest.raises(cpool.PoolTerminatedError):
            r.get(timeout=5)
        with pytest.raises(cpool.PoolTerminatedError):
            a.get(timeout=5)
        assert join_within(p, 10)
        assert time.monotonic() - t0 < 10
        with pytest.raises(ValueError):
            p.apply(square, (2,))
    finally:
        shutdown(p)


def test_terminate_twice_and_terminate_after_close(pool):
    pool.close()
    pool.terminate()
    pool.terminate()
    assert join_within(pool)


def test_context_manager():
    with cpool.Pool(2) as p:
        assert p.map(square, range(10)) == [square(i) for i in range(10)]
        pids = [w.pid for w in p._pool]
    assert p._state == multiprocessing.pool.TERMINATE
    with pytest.raises(ValueError):
        p.map(square, [1])
    assert join_within(p)
    assert wait_gone(pids) == set()


def test_context_manager_exit_on_exception():
    with pytest.raises(ZeroDivisionError):
        with cpool.Pool(2) as p:
            r = p.apply_async(time.sleep, (30,))
            1 / 0
    with pytest.raises(cpool.PoolTerminatedError):
        r.get(timeout=5)
    assert join_within(p)


def test_enter_closed_pool_raises(pool):
    pool.close()
    with pytest.raises(ValueError):
        with pool:
            pass


def test_terminate_from_callback(pool):
    done = threading.Event()

    def cb(_):
        pool.terminate()
        done.set()

    pool.apply_async(square, (2,), callback=cb)
    assert done.wait(T)
    assert join_within(pool)


def test_pool_is_not_picklable(pool):
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_repr(pool):
    assert "RUN" in repr(pool)
    pool.close()
    assert "CLOSE" in repr(pool)


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


# -- errors from tasks --------------------------------------------------------

def test_remote_traceback(pool):
    with pytest.raises(LookupError) as info:
        pool.apply(raise_marked)
    exc = info.value
    assert type(exc) is LookupError
    assert exc.args == ("marker raised in the worker", 42)
    cause = exc.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    src_line = next(line.strip() for line in inspect.getsource(raise_marked).splitlines()
                    if line.strip().startswith("raise"))
    assert src_line in str(cause)
    assert "raise_marked" in str(cause)


def test_remote_traceback_map(pool):
    with pytest.raises(ValueError) as info:
        pool.map(raise_value_error, [1])
    assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_unpicklable_result(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(return_lambda)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.map(return_lambda, range(5))
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply_async(return_lambda).get(timeout=T)
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


@pytest.mark.parametrize("make", [lambda: threading.Lock(), lambda: (lambda: 0)],
                         ids=["lock", "lambda"])
@each_start_method()
def test_unpicklable_argument(pool, make):
    bad = make()
    expected = expected_pickling_error(bad)
    with pytest.raises(expected):
        pool.apply_async(identity, (bad,))
    with pytest.raises(expected):
        pool.apply(identity, (bad,))
    with pytest.raises(expected):
        pool.map(identity, [1, bad, 2])
    assert pool._cache == {}
    assert pool.apply(square, (5,)) == 25
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


def test_unpicklable_function(pool):
    fn = lambda x: x  # noqa: E731 - a local lambda cannot be pickled
    expected = expected_pickling_error(fn)
    with pytest.raises(expected):
        pool.apply(fn, (1,))
    with pytest.raises(expected):
        pool.map(fn, [1, 2])
    assert pool.map(square, [3]) == [9]


# -- garbage collection -------------------------------------------------------

def test_resource_warning_and_cleanup_on_gc():
    p = cpool.Pool(2)
    assert p.map(square, range(4)) == [0, 1, 4, 9]
    pids = [w.pid for w in p._pool]
    tmpl = p._core.template_pid
    assert all(pids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught), caught
    assert wait_gone(pids) == set(), "worker processes survive their pool"
    assert wait_gone([tmpl]) == set(), "template process survives its pool"


def test_no_warning_after_close_join():
    p = cpool.Pool(1)
    p.close()
    assert join_within(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_no_leftover_segments_after_large_payloads():
    before = set(shm_names())
    p = cpool.Pool(2)
    try:
        blobs = [os.urandom(n) for n in (10, 70_000, 300_000, 3_000_000, 20_000_000)]
        for b in blobs:
            assert p.apply(payload_len, (b,)) == (len(b), b[::-1])
        assert p.map(payload_len, blobs, 1) == [(len(b), b[::-1]) for b in blobs]
        assert segment_fds(), "large records travel through segments (memfds)"
    finally:
        shutdown(p)
    # Segments are memfds: nothing named, and the pool's end closes and
    # unmaps every one this process held.
    assert set(shm_names()) - before == set()
    assert segment_fds() == {}
    assert segments_mapped() == []


# -- callbacks ------------------------------------------------------------------

def test_callbacks_run_in_parent(pool):
    pids = []
    r = pool.apply_async(square, (2,), callback=lambda v: pids.append(os.getpid()))
    r.get(timeout=T)
    r = pool.apply_async(raise_value_error, (2,),
                         error_callback=lambda e: pids.append(os.getpid()))
    with pytest.raises(ValueError):
        r.get(timeout=T)
    pool.map_async(square, [1, 2], callback=lambda v: pids.append(os.getpid())).get(timeout=T)
    assert pids == [os.getpid()] * 3


def test_raising_callback_does_not_stop_results(pool, capfd):
    def bad_callback(value):
        raise RuntimeError(f"callback boom {value}")

    first = pool.apply_async(square, (3,), callback=bad_callback)
    assert first.get(timeout=T) == 9
    bad_err = pool.apply_async(raise_value_error, (1,), error_callback=bad_callback)
    with pytest.raises(ValueError):
        bad_err.get(timeout=T)
    rs = [pool.apply_async(square, (i,)) for i in range(20)]
    assert [r.get(timeout=T) for r in rs] == [square(i) for i in range(20)]
    assert pool.map(square, range(5)) == [square(i) for i in range(5)]
    err = capfd.readouterr().err
    assert "callback boom 9" in err
    assert "RuntimeError" in err


def test_concurrent_submitters(pool):
    errors = []
    results = {}

    def submit(k):
        try:
            data = list(range(k * 1000, k * 1000 + 300))
            results[k] = (pool.map(square, data, 7) == list(map(square, data)),
                          [pool.apply_async(add3, (k, i)).get(timeout=T)
                           for i in range(20)] == [add3(k, i) for i in range(20)])
        except BaseException as e:
            errors.append(e)

    run_threads(submit, [(k,) for k in range(4)], T)
    assert errors == []
    assert results == {k: (True, True) for k in range(4)}


# -- dying workers ---------------------------------------------------------------

@each_start_method()
def test_worker_sigkill_self(pool):
    r = pool.apply_async(kill_self)
    with pytest.raises(cpool.WorkerLostError) as info:
        r.get(timeout=T)
    assert info.value.signal == signal.SIGKILL
    assert info.value.exitcode == -signal.SIGKILL
    assert info.value.pid and info.value.pid != os.getpid()
    assert pool.map(square, range(30)) == [square(i) for i in range(30)]
    assert pool.apply(square, (6,)) == 36


@each_start_method(processes=2)
def test_worker_killed_from_outside(pool, tmp_path):
    path = str(tmp_path / "pid")
    r = pool.apply_async(report_pid_and_sleep, (path,))
    pid = wait_for_file(path)
    others = [pool.apply_async(square, (i,)) for i in range(20)]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(cpool.WorkerLostError) as info:
        r.get(timeout=T)
    assert info.value.pid == pid
    assert info.value.signal == signal.SIGKILL
    # only the task the dead worker was running fails
    assert [o.get(timeout=T) for o in others] == [square(i) for i in range(20)]
    assert pool.map(square, range(40), 3) == [square(i) for i in range(40)]
    assert pid not in [w.pid for w in pool._pool]


def test_worker_os_exit(pool):
    r = pool.apply_async(exit_three)
    with pytest.raises(cpool.WorkerLostError) as info:
        r.get(timeout=T)
    assert info.value.exitcode == 3
    assert info.value.signal is None
    assert pool.map(square, range(30)) == [square(i) for i in range(30)]


def test_worker_death_in_map(pool):
    with pytest.raises(cpool.WorkerLostError):
        pool.map_async(exit_three, range(3)).get(timeout=T)
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


def test_worker_lost_error_pickles():
    e = cpool.WorkerLostError("gone", 123, -9, 9)
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), e2.args, e2.pid, e2.exitcode, e2.signal) == \
        (type(e), e.args, e.pid, e.exitcode, e.signal)


# -- the module as a drop-in for multiprocessing -------------------------------------

@pytest.mark.parametrize("name", ["Process", "Queue", "cpu_count", "current_process",
                                  "Manager", "Semaphore", "Event", "get_start_method",
                                  "active_children", "SimpleQueue"])
def test_module_reexports_multiprocessing(name):
    import cpool as mp
    assert getattr(mp, name) is getattr(multiprocessing, name)
    assert name in dir(mp)


def test_module_names():
    import cpool as mp
    import cpool.sharedctypes as sc
    assert mp.Pool is cpool_pool.Pool
    for name in ("Value", "Array", "RawValue", "RawArray", "Lock", "RLock"):
        assert getattr(mp, name) is getattr(sc, name)
    assert issubclass(mp.TimeoutError, multiprocessing.TimeoutError)
    assert cpool_pool.MaybeEncodingError is multiprocessing.pool.MaybeEncodingError
    assert cpool_pool.ThreadPool is multiprocessing.pool.ThreadPool
    with pytest.raises(AttributeError):
        mp.no_such_name_in_multiprocessing
    with pytest.raises(AttributeError):
        cpool_pool.no_such_name_either


def test_worker_identity(pool):
    results = pool.map(_worker_identity, range(8), 1)
    for name, pid in results:
        assert name.startswith("CPoolWorker-")
        assert pid != os.getpid()


def _worker_identity(_):
    return multiprocessing.current_process().name, os.getpid()


# -- threads, odd exceptions, interpreter exit ------------------------------------

@pytest.mark.parametrize("finish", ["terminate", "close"])
def test_join_from_another_thread(finish):
    """multiprocessing.Pool.join() works from any thread; so must cpool's,
    also once the pool's own collector thread has exited."""
    threads_before = len(os.listdir("/proc/self/task"))
    p = cpool.Pool(2)
    try:
        assert p.apply(square, (3,)) == 9
        getattr(p, finish)()
        # let the pool's collector thread end completely first
        deadline = time.monotonic() + T
        while (not p._core.done or len(os.listdir("/proc/self/task")) > threads_before) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        errors, done = [], threading.Event()

        def joiner():
            try:
                p.join()
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        threading.Thread(target=joiner, daemon=True).start()
        assert done.wait(T), "join() from a second thread hangs"
        assert errors == [], f"join() from a second thread raised {errors!r}"
    finally:
        shutdown(p)


def test_terminate_from_another_thread_fails_blocked_get(pool):
    r = pool.apply_async(time.sleep, (T,))
    timer = threading.Timer(0.3, pool.terminate)
    timer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(cpool.PoolTerminatedError):
            r.get(timeout=T)
        assert time.monotonic() - t0 < 10
    finally:
        timer.join(T)


# -- a waiting caller collects its results itself ---------------------------------

def test_callbacks_run_on_the_pools_thread_before_get_returns(pool):
    """get() collects results in the calling thread (no hand-off through the
    collector thread); callbacks still run on cpool's thread, as they do on
    multiprocessing's result handler, and have run when get() returns."""
    seen = {}
    rs = [pool.apply_async(square, (i,), error_callback=print,
                           callback=lambda v: seen.setdefault(v, threading.get_ident()))
          for i in range(50)]
    m = pool.map_async(square, range(100), chunksize=3, error_callback=print,
                       callback=lambda v: seen.setdefault(len(v) * 1000,
                                                          threading.get_ident()))
    for i, r in enumerate(rs):
        assert r.get(timeout=T) == i * i
        assert i * i in seen  # its callback has run
    assert m.get(timeout=T) == [i * i for i in range(100)]
    assert 100000 in seen
    assert len(seen) == 51 and threading.get_ident() not in seen.values()


def test_many_threads_waiting_at_once(pool):
    """Waiters race for the collection token: each gets its own results,
    whoever collected them."""
    out, errors = {}, []

    def run(k):
        try:
            got = [pool.apply(square, (k * 1000 + i,)) for i in range(200)]
            got += list(pool.imap(square, range(k, k + 300)))
            got.append(pool.map_async(square, range(50)).get(timeout=T))
            out[k] = got
        except BaseException as e:
            errors.append(e)

    run_threads(run, [(k,) for k in range(6)], T)
    assert errors == []
    for k, got in out.items():
        assert got[:200] == [(k * 1000 + i) ** 2 for i in range(200)]
        assert got[200:500] == [i * i for i in range(k, k + 300)]
        assert got[500] == [i * i for i in range(50)]
    assert len(out) == 6


def test_get_timeout_while_collecting(pool):
    r = pool.apply_async(time.sleep, (1.0,))
    t0 = time.monotonic()
    with pytest.raises(cpool.TimeoutError):
        r.get(timeout=0.2)
    assert time.monotonic() - t0 < 0.9
    assert r.get(timeout=T) is None


def test_callback_submits_more_work(pool):
    second = []
    done = threading.Event()

    def cb(value):
        second.append(pool.apply_async(square, (value,),
                                        callback=lambda v: done.set()))

    pool.apply_async(square, (3,), callback=cb).get(timeout=T)
    assert done.wait(T)
    assert second[0].get(timeout=T) == square(square(3))


def test_join_from_callback_raises_not_hangs(pool):
    errors = []
    done = threading.Event()

    def cb(_):
        try:
            pool.close()
            pool.join()
        except Exception as e:
            errors.append(e)
        finally:
            done.set()

    pool.apply_async(square, (1,), callback=cb)
    assert done.wait(T)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a)


def raise_needs_two(_=None):
    raise NeedsTwoArgs(1, 2)


def raise_system_exit(_=None):
    sys.exit(5)


def raise_keyboard_interrupt(_=None):
    raise KeyboardInterrupt


def test_exception_that_cannot_be_unpickled(pool):
    # pickle can dump it but not load it: the caller gets an error, no hang
    try:
        pickle.loads(pickle.dumps(NeedsTwoArgs(1, 2)))
    except Exception as e:
        expected = type(e)
    with pytest.raises(cpool.ResultUnpicklingError) as info:
        pool.apply_async(raise_needs_two).get(timeout=T)
    # it names what failed, and why
    assert isinstance(info.value, pickle.UnpicklingError)
    assert type(info.value.__cause__) is expected
    assert "exception raised by task 0" in str(info.value)
    assert pool.map(square, range(5)) == [square(i) for i in range(5)]


@pytest.mark.parametrize("func", [raise_system_exit, raise_keyboard_interrupt])
def test_base_exceptions_in_task(pool, func):
    r = pool.apply_async(func)
    # Raising SystemExit or KeyboardInterrupt in the caller would exit or
    # "interrupt" it: a TaskAbortedError carries the original instead.
    with pytest.raises(cpool.TaskAbortedError) as info:
        r.get(timeout=T)
    assert type(info.value.__cause__) is {raise_system_exit: SystemExit,
                                          raise_keyboard_interrupt: KeyboardInterrupt}[func]
    assert r.ready()
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


def test_many_inline_payload_sizes(pool):
    # sizes around the ring's inline limit and wrap-around point
    sizes = [1, 100, 4000, 30_000, 65_000, 66_000, 70_000, 130_000] * 6
    blobs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    rs = [pool.apply_async(payload_len, (b,)) for b in blobs]
    assert [r.get(timeout=T) for r in rs] == [(len(b), b[::-1]) for b in blobs]
    assert pool.map(payload_len, blobs, 3) == [(len(b), b[::-1]) for b in blobs]


def test_many_small_tasks(pool):
    n = 20_000
    assert pool.map(square, range(n), 1) == [square(i) for i in range(n)]
    assert sum(pool.imap_unordered(square, range(n), 50)) == sum(map(square, range(n)))


def test_only_the_dying_task_fails_among_short_ones(pool):
    # short tasks first, so several may be queued per worker
    assert pool.map(square, range(2000), 1) == [square(i) for i in range(2000)]
    rs = [pool.apply_async(kill_self if i == 50 else square, (i,)) for i in range(200)]
    for i, r in enumerate(rs):
        if i == 50:
            with pytest.raises(cpool.WorkerLostError):
                r.get(timeout=T)
        else:
            assert r.get(timeout=T) == square(i)


EXIT_SNIPPET = """
import os, sys, time, cpool

def nap(t):
    time.sleep(t)

if __name__ == "__main__":
    p = cpool.Pool(2)
    p.map(abs, [1, 2])
    r = p.map_async(nap, [30, 30], chunksize=1)
    print(" ".join(str(w.pid) for w in p._pool), p._core.template_pid, flush=True)
    time.sleep(0.2)
    if sys.argv[1] == "sigkill":
        os.kill(os.getpid(), 9)
    # "exit": leave with the pool running; atexit must stop it
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_workers_die_with_their_parent(how):
    t0 = time.monotonic()
    res = run_python(EXIT_SNIPPET, timeout=60, args=[how])
    assert time.monotonic() - t0 < 20
    if how == "exit":
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode == -signal.SIGKILL, res.stderr
    pids = [int(x) for x in res.stdout.split()]
    assert len(pids) == 3
    assert wait_not_running(pids) == set()
