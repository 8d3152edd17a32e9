"""retries=: a task whose worker died under it runs again on another worker,
up to `retries` times, before it fails with WorkerLostError; a task that
raises is never run again.  Runs are counted in shared memory (a cpool
Array the task itself increments), so "how many times did it run" is what
the workers did, not what the parent believes."""
import os
import random
import signal
import threading
import time

import pytest

import cpool
from conftest import each_start_method, run_scenario


def count_run(runs, i):
    with runs.get_lock():
        runs[i] += 1
        return runs[i]


def die_first_times(runs, i, deaths, value):
    """Kills its worker on its first `deaths` runs, then returns value."""
    if count_run(runs, i) <= deaths:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def always_die(runs, i):
    count_run(runs, i)
    os.kill(os.getpid(), signal.SIGKILL)


def raise_once(runs, i):
    count_run(runs, i)
    raise ValueError(f"task {i} raised")


def item(runs, i):
    count_run(runs, i)
    time.sleep(0.002)
    return i * i


@each_start_method(2)
def test_a_task_killed_once_runs_again_and_succeeds(pool):
    runs = cpool.Array("i", 4)
    got = pool.apply(die_first_times, (runs, 0, 1, "ok"), retries=1)
    assert got == "ok" and runs[0] == 2
    big = b"x" * (3 << 20)   # through a segment: the resend must still have it
    assert pool.apply(die_first_times, (runs, 1, 2, big), retries=2) == big
    assert runs[1] == 3
    s = pool.stats()
    assert s.retried == 3 and s.lost == 0
    # the third replacement may still be on its way
    end = time.monotonic() + 10
    while sum(w.respawns for w in pool.stats().workers) < 3:
        assert time.monotonic() < end, pool.stats()
        time.sleep(0.01)


@each_start_method(2)
def test_a_task_that_kills_every_worker_fails_after_retries_plus_one_deaths(pool):
    runs = cpool.Array("i", 3)
    for i, retries in enumerate((0, 1, 3)):
        with pytest.raises(cpool.WorkerLostError) as e:
            pool.apply(always_die, (runs, i), retries=retries)
        assert runs[i] == retries + 1
        if retries:
            assert f"run {retries + 1} times" in str(e.value)
        assert e.value.signal == signal.SIGKILL
    assert pool.map(abs, range(-5, 5)) == [abs(i) for i in range(-5, 5)]
    s = pool.stats()
    assert s.lost == 3 and s.retried == 4


def test_a_task_that_raises_is_never_run_again():
    runs = cpool.Array("i", 8)
    with cpool.Pool(2, retries=5) as pool:
        with pytest.raises(ValueError, match="task 0 raised"):
            pool.apply(raise_once, (runs, 0))
        results = [pool.apply_async(raise_once, (runs, i)) for i in range(1, 8)]
        for r in results:
            with pytest.raises(ValueError):
                r.get(30)
        assert list(runs) == [1] * 8
        assert pool.stats().retried == 0


def test_the_pools_retries_and_a_calls_own():
    runs = cpool.Array("i", 4)
    with cpool.Pool(2, retries=2) as pool:
        assert pool.apply(die_first_times, (runs, 0, 2, 7)) == 7      # the pool's
        with pytest.raises(cpool.WorkerLostError):
            pool.apply(die_first_times, (runs, 1, 1, 7), retries=0)  # the call's
        assert runs[0] == 3 and runs[1] == 1
    with cpool.Pool(2) as pool:                                       # default: 0
        with pytest.raises(cpool.WorkerLostError):
            pool.apply(die_first_times, (runs, 2, 1, 7))
        assert pool.apply(die_first_times, (runs, 3, 1, 7), retries=1) == 7


def test_every_map_flavour_retries_a_chunk_whose_worker_died():
    runs = cpool.Array("i", 40)
    with cpool.Pool(2, retries=1) as pool:
        calls = [
            lambda a: pool.starmap(die_first_times, a, chunksize=2),
            lambda a: pool.starmap_async(die_first_times, a, chunksize=3).get(30),
            lambda a: list(pool.imap(_star, a, chunksize=2)),
            lambda a: sorted(pool.imap_unordered(_star, a)),
        ]
        for k, call in enumerate(calls):
            base = 10 * k
            # item base+3 kills its worker once; its chunk runs again
            args = [(runs, base + i, 1 if i == 3 else 0, base + i) for i in range(10)]
            assert call(args) == [base + i for i in range(10)]
            assert runs[base + 3] == 2
        assert pool.stats().retried == 4


def _star(args):
    return die_first_times(*args)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), ("1", TypeError),
                                        (True, TypeError), (1.0, TypeError),
                                        (2 ** 32, ValueError)])
def test_bad_retries_are_clear_errors_and_the_pool_goes_on(bad, error):
    with pytest.raises(error, match="retries"):
        cpool.Pool(1, retries=bad)
    with cpool.Pool(1) as pool:
        for call in (lambda: pool.apply(abs, (1,), retries=bad),
                     lambda: pool.map(abs, [1], retries=bad),
                     lambda: pool.imap(abs, [1], retries=bad)):
            with pytest.raises(error, match="retries"):
                call()
        assert pool.apply(abs, (-3,)) == 3


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_map_survives_random_kills_with_every_result_right(method, tmp_path):
    """The issue's chaos test: a 600-item map with retries=2 while a thread
    SIGKILLs a random worker twice (so no chunk can meet more than two
    deaths): every result right, no item run more than retries + 1 times,
    and the kills seen in the stats."""
    out = run_scenario("""
        import os, random, signal, sys, threading, time
        sys.path.insert(0, %r)
        import cpool
        from test_retries import item

        if __name__ == "__main__":
            runs = cpool.Array("i", 600)
            with cpool.Pool(2, context={method}, retries=2) as pool:
                pool.map(abs, range(4))                  # the workers are up
                killed = []

                def killer():
                    for _ in range(2):
                        time.sleep(random.uniform(0.15, 0.35))
                        pid = random.choice([w.pid for w in pool.stats().workers
                                             if w.pid])
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

                t = threading.Thread(target=killer)
                t.start()
                got = pool.starmap(item, [(runs, i) for i in range(600)], chunksize=4)
                t.join()
                s = pool.stats()
            assert got == [i * i for i in range(600)]
            assert min(runs) >= 1 and max(runs) <= 3, (min(runs), max(runs))
            assert len(killed) == 2 and s.lost == 0, s
            print("retried", s.retried, "reruns", sum(runs) - 600)
    """ % os.path.dirname(__file__), method=method, tmp_path=tmp_path, timeout=50)
    assert "retried" in out
