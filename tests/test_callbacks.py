"""Callbacks: they run in the parent, on cpool's thread, and have run when
get() returns; one that raises is reported and later results still arrive;
one may submit more work, and one that joins gets an error, not a hang."""
import os
import threading

import pytest

from tasks import T, square, raise_value_error


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
