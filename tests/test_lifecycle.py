"""A pool's end: close, join, terminate (unfinished results fail with
PoolTerminatedError), the context manager, from another thread or a
callback; a pool dropped without them (ResourceWarning, processes gone);
and its processes going with the interpreter that made it."""
import gc
import multiprocessing
import multiprocessing.pool
import os
import pickle
import signal
import threading
import time
import warnings

import pytest

import cpool
from conftest import join_within, run_python, shutdown
from procs import wait_gone, wait_not_running
from tasks import T, square, add3, sleep_then


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


# -- join and terminate from another thread -----------------------------------

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


# -- interpreter exit ---------------------------------------------------------

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
