"""Fault scenarios: a worker or the template dies, or is stuck, or is
replaced while the parent runs threads.  The pool fails what it must
(WorkerLostError, PoolTerminatedError) and goes on, or ends, without hanging.
Each runs in a fresh interpreter under a time limit: a hang fails the test,
it is never skipped."""
import pytest

from conftest import run_scenario


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_worker_death_fails_only_its_task_and_pool_goes_on(method, tmp_path):
    out = run_scenario("""
        import os, cpool
        def maybe_die(x):
            if x == 13:
                os._exit(7)
            return x * 2
        if __name__ == "__main__":
            pool = cpool.Pool(2, context={method})
            it = pool.imap(maybe_die, range(40))
            got, errors = [], []
            while True:
                try:
                    got.append(next(it, None))
                    if got[-1] is None:
                        got.pop(); break
                except cpool.WorkerLostError as e:
                    errors.append((e.exitcode, "task 13" in str(e)))
            assert errors == [(7, True)], errors
            expected = [x * 2 for x in range(40) if x != 13]
            assert got == expected, got
            assert pool.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
            pool.close(); pool.join()
            print("ok")
    """, method=method, tmp_path=tmp_path)
    assert out.strip() == "ok"


def test_worker_death_is_seen_when_the_parent_ignores_sigchld():
    out = run_scenario("""
        import os, signal, cpool
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # as daemons often do
        pool = cpool.Pool(2)
        try:
            pool.apply_async(os._exit, (3,)).get(timeout=20)
        except cpool.WorkerLostError as e:
            print("lost", e.exitcode)
        print(sum(pool.map_async(abs, range(100)).get(timeout=20)))
        pool.terminate(); pool.join()
    """)
    assert out.split() == ["lost", "3", "4950"]


def test_maxtasksperchild_with_logging_threads_never_deadlocks():
    # Replacement workers come from the template, forked before the threads
    # started: none of them inherits the logging lock held by a thread.
    out = run_scenario("""
        import logging, threading, io, cpool
        log = logging.getLogger("busy")
        log.addHandler(logging.StreamHandler(io.StringIO()))
        log.setLevel(logging.INFO)
        def task(x):
            log.info("in worker %s", x)
            return x + 1
        pool = cpool.Pool(2, maxtasksperchild=2)
        stop = threading.Event()
        def chatter():
            while not stop.is_set():
                log.info("parent thread busy")
        threads = [threading.Thread(target=chatter) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                assert pool.map_async(task, range(8), chunksize=1).get(timeout=30) == list(range(1, 9))
        finally:
            stop.set()
            for t in threads:
                t.join()
        pool.close(); pool.join()
        print("ok")
    """, timeout=120)
    assert out.strip() == "ok"


def test_template_killed_while_idle_fails_calls_instead_of_hanging():
    out = run_scenario("""
        import os, signal, time, cpool
        pool = cpool.Pool(2)
        pool.apply(abs, (-3,))
        os.kill(pool._core.template_pid, signal.SIGKILL)
        time.sleep(0.3)
        try:
            pool.apply_async(abs, (-4,)).get(timeout=20)
        except (cpool.PoolTerminatedError, ValueError) as e:
            print("failed", type(e).__name__)
        pool.close()
        print("joined", pool._core.join(20))
    """)
    assert out.split()[0] == "failed" and out.split()[-2:] == ["joined", "True"]


def test_template_killed_during_a_long_get_fails_it_instead_of_hanging():
    # The caller collects for itself while it waits (the collector thread
    # naps): it must notice the template's death too.
    out = run_scenario("""
        import os, signal, threading, time, cpool
        pool = cpool.Pool(2)
        r = pool.apply_async(time.sleep, (60,))
        pool._pool
        threading.Timer(0.3, os.kill, (pool._core.template_pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        try:
            r.get(timeout=30)
        except (cpool.PoolTerminatedError, cpool.WorkerLostError) as e:
            print("failed", type(e).__name__, time.monotonic() - t0 < 10)
        pool.terminate()
        pool.join()
    """)
    assert out.split()[0] == "failed" and out.split()[-1] == "True"


def test_terminate_returns_when_the_workers_are_stuck_in_a_fork_hook():
    # A user's fork hook waiting on a lock another thread held at Pool():
    # every worker hangs in it before its loop (the template runs no hooks).
    # terminate() still returns, and the task fails.
    out = run_scenario("""
        import os, threading, time, cpool
        lock = threading.Lock()
        os.register_at_fork(after_in_child=lambda: lock.acquire())
        def holder():
            with lock:
                time.sleep(60)
        threading.Thread(target=holder, daemon=True).start()
        time.sleep(0.1)
        pool = cpool.Pool(2)
        r = pool.apply_async(abs, (-1,))
        try:
            r.get(timeout=2)
        except cpool.TimeoutError:
            print("stuck")
        t = time.monotonic()
        pool.terminate(); pool.join()
        print("returned", time.monotonic() - t < 10)
        try:
            r.get(timeout=5)
        except cpool.PoolTerminatedError:
            print("failed cleanly")
        os._exit(0)
    """)
    assert out.split() == ["stuck", "returned", "True", "failed", "cleanly"]
