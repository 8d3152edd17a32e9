"""A worker that dies (SIGKILL, os._exit, killed from outside) fails exactly
the tasks it held with WorkerLostError, and is replaced; the pool goes on."""
import os
import pickle
import signal
import time

import pytest

import cpool
from conftest import each_start_method
from tasks import T, report_pid_and_sleep, square


# -- functions run in the workers (module level: pickled by reference) --------

def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(T)


def exit_three(_=None):
    os._exit(3)


# -- helpers ------------------------------------------------------------------

def wait_for_file(path, timeout=T):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    with open(path) as f:
        return int(f.read())


# -- dying workers ------------------------------------------------------------

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
