"""cpool.ProcessPoolExecutor: concurrent.futures on cpool's core.

submit/map/shutdown/cancel, callbacks, as_completed, wait, asyncio, a killed
worker failing only its own future (and the executor going on), bad input,
and the interpreter-exit cases CPython's tests check with the stdlib's
executor in a fresh interpreter.  CPython's own tests run against it in
tests/test_cpython_futures.py.
"""
import asyncio
import concurrent.futures as cf
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import cpool
from cpool.futures import Future, ProcessPoolExecutor
from conftest import START_METHODS, run_python, run_scenario
from tasks import T, add3, kw_echo, raise_value_error, report_pid_and_sleep, sleep_then, square


# -- functions run in the workers (module level: pickled by reference) --------

def touch(path, delay=0.0):
    time.sleep(delay)
    with open(path, "w"):
        pass
    return path


def init_raises(_=None):
    raise ValueError("bad initializer")


def wait_for_file(path, timeout=T):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(params=["fork"])
def executor(request):
    ex = ProcessPoolExecutor(2, mp_context=request.param)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


each_method = pytest.mark.parametrize("executor", START_METHODS, indirect=True)


# -- what it is ----------------------------------------------------------------

def test_it_is_the_stdlib_executor_to_isinstance_with_none_of_its_machinery():
    assert cpool.ProcessPoolExecutor is cpool.futures.ProcessPoolExecutor
    threads = threading.active_count()
    with ProcessPoolExecutor(2) as ex:
        assert isinstance(ex, cf.ProcessPoolExecutor) and isinstance(ex, cf.Executor)
        f = ex.submit(square, 3)
        assert isinstance(f, cf.Future) and isinstance(f, Future)
        assert f.result(timeout=T) == 9
        # No management thread (cpool's collector is C, not a threading
        # thread), no multiprocessing.Process, no call queue.
        assert threading.active_count() == threads
        assert multiprocessing.active_children() == []
        assert not hasattr(ex, "_call_queue") or ex.__dict__.get("_call_queue") is None
        assert len(ex._processes) == 2


# -- submit --------------------------------------------------------------------

@each_method
def test_submit_args_kwargs_and_exceptions(executor):
    assert executor.submit(add3, 1, b=2, c=3).result(timeout=T) == 6
    assert executor.submit(kw_echo, 1, fn=2, self=3).result(timeout=T) == \
        ((1,), {"fn": 2, "self": 3})
    f = executor.submit(raise_value_error, 5)
    e = f.exception(timeout=T)
    assert type(e) is ValueError
    assert type(e.__cause__) is cf.process._RemoteTraceback
    assert "raise_value_error" in e.__cause__.tb
    with pytest.raises(ValueError):
        f.result()
    with pytest.raises(TypeError):
        executor.submit()
    # Still working.
    assert executor.submit(square, 4).result(timeout=T) == 16


def test_many_submits_from_threads(executor):
    out = {}

    def run(k):
        fs = [executor.submit(square, k * 1000 + i) for i in range(300)]
        out[k] = [f.result(timeout=T) for f in fs]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    for k in range(4):
        assert out[k] == [(k * 1000 + i) ** 2 for i in range(300)]


def test_result_timeout_is_the_futures_timeout(executor):
    f = executor.submit(sleep_then, 1.0, "late")
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    assert f.running()
    assert f.result(timeout=T) == "late"


# -- callbacks, as_completed, wait, asyncio -------------------------------------

def test_done_callbacks_run_once_with_the_future(executor):
    seen = []
    done = threading.Event()

    def cb(fut):
        seen.append((fut, fut.result()))
        done.set()

    f = executor.submit(sleep_then, 0.1, "x")
    f.add_done_callback(cb)
    assert done.wait(T)
    assert seen == [(f, "x")]
    later = []
    f.add_done_callback(later.append)   # done already: runs at once, here
    assert later == [f]


def test_a_callback_that_raises_is_logged_and_later_ones_run(executor, caplog):
    ran = threading.Event()

    def bad(_):
        raise RuntimeError("callback failed")

    f = executor.submit(sleep_then, 0.1, 1)
    f.add_done_callback(bad)
    f.add_done_callback(lambda _: ran.set())
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        assert ran.wait(T)
    assert "exception calling callback" in caplog.text
    assert executor.submit(square, 2).result(timeout=T) == 4


def test_as_completed_and_wait(executor):
    fs = [executor.submit(sleep_then, d, d) for d in (0.6, 0.0, 0.3)]
    order = [f.result() for f in cf.as_completed(fs, timeout=T)]
    assert sorted(order) == [0.0, 0.3, 0.6] and order[0] == 0.0
    fs = [executor.submit(sleep_then, 1.0), executor.submit(raise_value_error, 1)]
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert fs[1] in done and fs[0] in not_done
    done, not_done = cf.wait(fs, timeout=T)
    assert done == set(fs) and not not_done


@each_method
def test_asyncio_wrap_future_and_run_in_executor(executor):
    async def main():
        loop = asyncio.get_running_loop()
        a = await asyncio.wrap_future(executor.submit(square, 6))
        b = await loop.run_in_executor(executor, square, 7)
        c = await asyncio.gather(*(asyncio.wrap_future(executor.submit(square, i))
                                   for i in range(50)))
        return a, b, c

    assert asyncio.run(main()) == (36, 49, [i * i for i in range(50)])


# -- cancel and shutdown -----------------------------------------------------------

def test_a_cancelled_pending_future_never_runs(tmp_path):
    with ProcessPoolExecutor(1) as ex:
        first = ex.submit(sleep_then, 0.5)
        fs = [ex.submit(touch, str(tmp_path / str(i))) for i in range(20)]
        assert first.running() and not first.cancel()
        # The executor holds 2 calls per worker on the core; the rest wait.
        cancelled = [i for i, f in enumerate(fs) if f.cancel()]
        assert len(cancelled) >= 15
        for i in cancelled:
            assert fs[i].cancelled()
            with pytest.raises(cf.CancelledError):
                fs[i].result(timeout=T)
        done, not_done = cf.wait(fs, timeout=T)
        assert not not_done
    for i, f in enumerate(fs):
        assert os.path.exists(tmp_path / str(i)) == (i not in cancelled)


def test_shutdown_cancel_futures_and_submit_after_shutdown(tmp_path):
    ex = ProcessPoolExecutor(1)
    ex.submit(sleep_then, 0.3)
    fs = [ex.submit(touch, str(tmp_path / str(i))) for i in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [i for i, f in enumerate(fs) if f.cancelled()]
    assert len(cancelled) >= 15
    for i, f in enumerate(fs):
        assert f.done()
        assert os.path.exists(tmp_path / str(i)) == (i not in cancelled)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.map(square, [1])
    ex.shutdown()   # again: nothing
    assert ex._processes is None


def test_shutdown_waits_for_pending_work_and_no_wait_returns_at_once(tmp_path):
    ex = ProcessPoolExecutor(2)
    fs = [ex.submit(touch, str(tmp_path / str(i)), 0.05) for i in range(12)]
    ex.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in fs)
    assert len(os.listdir(tmp_path)) == 12

    ex = ProcessPoolExecutor(1)
    fs = [ex.submit(sleep_then, 0.3, i) for i in range(4)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.25
    assert [f.result(timeout=T) for f in fs] == [0, 1, 2, 3]


def test_the_context_manager_waits_and_a_dropped_executor_finishes_its_work(tmp_path):
    with ProcessPoolExecutor(2) as ex:
        f = ex.submit(sleep_then, 0.2, "done")
    assert f.done() and f.result() == "done"
    ex = ProcessPoolExecutor(1)
    fs = [ex.submit(touch, str(tmp_path / str(i)), 0.05) for i in range(5)]
    del ex      # as shutdown(wait=False): the work still runs, nothing warns
    assert [os.path.basename(f.result(timeout=T)) for f in fs] == list("01234")


# -- map ---------------------------------------------------------------------------

@each_method
def test_map_in_order_with_chunks_and_several_iterables(executor):
    assert list(executor.map(square, range(50))) == [i * i for i in range(50)]
    assert list(executor.map(pow, range(40), range(40), chunksize=7)) == \
        [pow(i, i) for i in range(40)]
    assert list(executor.map(square, [])) == []


def test_map_raises_the_first_error_in_place_and_stops(executor):
    it = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1) and next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)
    assert list(it) == []


def test_map_timeout_is_from_the_call(executor):
    it = executor.map(sleep_then, [0.0, 0.0, 3.0], timeout=1.0)
    got = []
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        for x in it:
            got.append(x)
    assert got == [None, None]
    assert time.monotonic() - t0 < 2.5


def test_map_bad_arguments(executor):
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        executor.map(square, [1], chunksize=0)
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        executor.map(square, [1], buffersize=2.0)
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        executor.map(square, [1], buffersize=0)
    assert list(executor.map(square, [3])) == [9]


def test_map_reads_its_input_at_once_without_buffersize(executor):
    read = []

    def items():
        for i in range(20):
            read.append(i)
            yield i

    it = executor.map(square, items())
    assert len(read) == 20          # as the stdlib's: all submitted by map()
    assert list(it) == [i * i for i in range(20)]


def test_map_with_buffersize_is_lazy_and_works_on_an_endless_input(executor):
    read = []

    def items():
        for i in itertools.count():
            read.append(i)
            yield i

    it = executor.map(square, items(), buffersize=3)
    taken = [next(it) for _ in range(10)]
    assert taken == [i * i for i in range(10)]
    assert len(read) <= 10 + 3 + 1
    # shutdown stops reading its input (no hang on the endless one); what
    # it had submitted still comes, then the iteration says why it ends.
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        for _ in range(10):
            next(it)


def test_map_input_error_with_buffersize_comes_in_place(executor):
    def items():
        yield 1
        yield 2
        raise KeyError("input")

    it = executor.map(square, items(), buffersize=2)
    assert next(it) == 1 and next(it) == 4
    with pytest.raises(KeyError):
        next(it)


# -- a worker that dies --------------------------------------------------------------

@each_method
def test_a_killed_worker_fails_only_its_future_and_the_executor_goes_on(executor, tmp_path):
    path = str(tmp_path / "pid")
    victim = executor.submit(report_pid_and_sleep, path)
    others = [executor.submit(sleep_then, 0.2, i) for i in range(6)]
    wait_for_file(path)
    with open(path) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    with pytest.raises(cpool.WorkerLostError) as info:
        victim.result(timeout=T)
    assert isinstance(info.value, BrokenProcessPool)    # existing except clauses
    assert "SIGKILL" in str(info.value)
    assert [f.result(timeout=T) for f in others] == list(range(6))
    assert not executor._broken
    assert executor.submit(square, 5).result(timeout=T) == 25
    assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_a_worker_death_in_map_raises_broken_process_pool_in_place(executor):
    it = executor.map(os._exit, [3], chunksize=1)
    with pytest.raises(BrokenProcessPool):
        next(it)
    assert executor.submit(square, 3).result(timeout=T) == 9


# -- bad input ---------------------------------------------------------------------

@each_method
def test_an_unpicklable_argument_fails_its_future_and_the_executor_goes_on(executor):
    f = executor.submit(square, lambda: 1)
    e = f.exception(timeout=T)
    assert isinstance(e, (pickle.PicklingError, AttributeError, TypeError))
    assert executor.submit(square, 6).result(timeout=T) == 36


@pytest.mark.parametrize("method", START_METHODS)
def test_an_initializer_that_raises_breaks_the_executor_clearly(method, caplog):
    with ProcessPoolExecutor(2, mp_context=method, initializer=init_raises,
                             initargs=(1,)) as ex:
        f = ex.submit(square, 2)
        with pytest.raises(BrokenProcessPool) as info:
            f.result(timeout=T)
        assert isinstance(info.value, cpool.InitializerError)
        assert isinstance(info.value.__cause__, ValueError)
        deadline = time.monotonic() + T
        while not ex._broken:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 3)
    # A new executor works.
    with ProcessPoolExecutor(1, mp_context=method) as ex:
        assert ex.submit(square, 3).result(timeout=T) == 9


def test_constructor_arguments_are_checked_as_the_stdlib_does():
    for n in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ProcessPoolExecutor(n)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ProcessPoolExecutor(1, initializer=3)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        ProcessPoolExecutor(1, max_tasks_per_child=1.5)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="cannot find context"):
        ProcessPoolExecutor(1, mp_context="threads")
    with ProcessPoolExecutor(1) as ex:
        assert ex.submit(square, 2).result(timeout=T) == 4


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_max_tasks_per_child_replaces_the_worker(method):
    # Under fork too: replacements fork from cpool's template.
    with ProcessPoolExecutor(1, mp_context=method, max_tasks_per_child=2) as ex:
        pids = [ex.submit(os.getpid).result(timeout=T) for _ in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]


# -- interpreter exit (CPython checks these with the stdlib's executor) ----------------

def test_work_submitted_before_exit_is_done_and_submit_at_exit_raises():
    out = run_scenario("""
        import atexit, sys, time
        import cpool

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg)
            sys.stdout.flush()

        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError as e:
                print("runtime-error:", e)

        t = cpool.ProcessPoolExecutor(5)
        t.submit(sleep_and_print, 0.5, "apple")
    """)
    assert out.split("\n")[:2] == [
        "apple", "runtime-error: cannot schedule new futures after interpreter shutdown"]


def test_shutdown_without_wait_does_not_hang_at_exit():
    r = run_python("""
        import sys, time
        import cpool

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg)
            sys.stdout.flush()

        t = cpool.ProcessPoolExecutor(max_workers=3)
        t.submit(sleep_and_print, 0.5, "apple")
        t.shutdown(wait=False)
    """, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip() == "apple"
