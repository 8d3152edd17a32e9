"""Fault scenarios: bad input from the user's code, an initializer that
raises, a function that kills its worker when it is unpickled, an argument
that cannot be unpickled.  The caller gets an error, once, with no respawn
loop.  Each runs in a fresh interpreter under a time limit: a hang fails the
test, it is never skipped."""
import pytest

from conftest import run_scenario


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_initializer_failure_breaks_the_pool_without_respawning(method, tmp_path):
    out = run_scenario("""
        import time, cpool
        def bad_init():
            raise KeyError("no config")
        if __name__ == "__main__":
            pool = cpool.Pool(2, initializer=bad_init, context={method})
            for attempt in range(2):
                try:
                    pool.apply(abs, (1,))
                except cpool.InitializerError as e:
                    assert isinstance(e.__cause__, KeyError), repr(e.__cause__)
                    print("InitializerError")
            try:
                pool.map_async(abs, range(10))
            except cpool.InitializerError:
                print("InitializerError")
            time.sleep(0.5)
            # No respawn loop: the workers stay gone.
            print(sum(w.is_alive() for w in pool._pool))
            pool.terminate(); pool.join()
    """, method=method, tmp_path=tmp_path)
    assert out.split() == ["InitializerError"] * 3 + ["0"]


def test_a_function_that_kills_its_worker_when_unpickled_does_not_loop():
    out = run_scenario("""
        import os, cpool
        class Evil:
            def __reduce__(self):
                return (os._exit, (3,))
        pool = cpool.Pool(2)
        try:
            pool.map_async(Evil(), range(40), chunksize=1).get(timeout=20)
        except cpool.WorkerLostError:
            print("lost")
        assert pool.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
        # No respawn loop: a slot that had the job's tasks queued dies once
        # more (bounded), then the workers settle; a loop never would.
        import time
        deadline, last, since = time.monotonic() + 15, None, time.monotonic()
        while time.monotonic() < deadline:
            now = [w.pid for w in pool._pool]
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > 1.0:
                break
            time.sleep(0.05)
        print("stable", time.monotonic() < deadline and None not in last)
        pool.terminate(); pool.join()
    """)
    assert out.split() == ["lost", "stable", "True"]


def test_a_function_that_kills_its_worker_behind_another_jobs_function_does_not_loop():
    """Tasks measured short are pipelined, so the FUNC record a worker dies
    loading is often not the last one put on its ring (another job's
    follows).  The death must still be laid at that function's task (a
    respawn loop of thousands of workers otherwise), and the other job's
    task, which the worker never took, must run."""
    out = run_scenario("""
        import os, cpool
        class Evil:
            def __reduce__(self):
                return (os._exit, (3,))
            def __call__(self, x):
                return x
        with cpool.Pool(1) as pool:
            for _ in range(3):
                pool.map(abs, range(50), chunksize=1)   # measured short: pipelined
            bad = pool.map_async(Evil(), [1], chunksize=1)
            good = pool.map_async(abs, range(-5, 5), chunksize=1)
            try:
                bad.get(timeout=20)
            except cpool.WorkerLostError:
                print("lost")
            print(good.get(timeout=20) == [abs(x) for x in range(-5, 5)])
    """, timeout=50)
    assert out.split() == ["lost", "True"]


def test_large_argument_that_fails_to_unpickle_keeps_its_error():
    out = run_scenario("""
        import cpool
        class Bad:
            def __init__(self, pad):
                self.pad = pad
            def __reduce__(self):
                return (int, ("not-an-int",))
        pool = cpool.Pool(1)
        for size in (10, 1 << 20):
            try:
                pool.apply(len, (Bad(b"x" * size),))
            except ValueError as e:
                print("ValueError")
        pool.terminate(); pool.join()
    """)
    assert out.split() == ["ValueError", "ValueError"]


@pytest.mark.parametrize("call", ["map", "starmap"])
def test_an_input_list_that_shrinks_while_it_is_sent(call):
    """Pickling an item runs its __reduce__, which here empties the input
    list: the map raises RuntimeError (it read past the list's end, and
    crashed the parent, before), and the pool goes on."""
    out = run_scenario(f"""
        import cpool
        L = []
        class Shrinks:
            def __reduce__(self):
                L.clear()
                return (tuple, ((1, 2),))
        def f(*a):
            return 1
        if __name__ == "__main__":
            L.extend([Shrinks()] + [(i, 1) for i in range(100_000)])
            with cpool.Pool(2) as pool:
                try:
                    pool.{call}(f, L, chunksize=1000)
                except RuntimeError as e:
                    print(e)
                print(pool.{call}(f, [(1, 2)] * 10))
    """)
    assert out.splitlines() == ["the input list changed size during the map", str([1] * 10)]
