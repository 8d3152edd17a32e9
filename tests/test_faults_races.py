"""Fault scenarios: races between close()/terminate() and work in flight
(a large result already posted, a submission past its check, a large task
being pickled), and between threads that collect results.  Each once hung,
crashed or lost a result; each runs in a fresh interpreter under a time
limit: a hang fails the test, it is never skipped."""
from conftest import run_scenario


def test_terminate_keeps_a_large_result_already_posted():
    out = run_scenario("""
        import threading, time, cpool
        def small(x):
            return x
        def big(n):
            time.sleep(0.2)
            return b"y" * n
        pool = cpool.Pool(2)
        pool.apply(abs, (1,))
        started = threading.Event()
        def slow_callback(v):
            started.set()
            time.sleep(1.0)     # the collector is busy while big's result is posted
        pool.apply_async(small, (1,), callback=slow_callback)
        r = pool.apply_async(big, (1 << 20,))   # goes back through a segment
        started.wait(); time.sleep(0.5)
        pool.terminate()
        print(len(r.get(timeout=10)))
    """)
    assert out.strip() == str(1 << 20)


def test_a_submission_racing_close_is_refused_not_lost():
    out = run_scenario("""
        import threading, cpool
        from cpool.pool import ApplyResult
        for delay in (0, 0.001, 0.002, 0.005):
            pool = cpool.Pool(2)
            pool.apply(abs, (1,))
            pool.close()
            threading.Event().wait(delay)
            r = ApplyResult(pool._cache, None, None)
            try:   # what apply_async does after its check, late
                pool._core.submit_call(r._job, abs, (-7,), {})
                print(r.get(timeout=20))
            except ValueError:
                r._abandon()
                print("refused")
            print(pool._core.join(20))
    """)
    lines = out.split()
    assert all(x in ("7", "refused", "True") for x in lines) and lines.count("True") == 4


def test_terminate_racing_a_large_submit_does_not_crash_the_parent():
    # A recycled task segment swept by terminate() was reused at its old
    # size: the write past the end of the new empty file was a SIGBUS.
    out = run_scenario("""
        import threading, time, cpool
        done = threading.Event()
        class SlowToPickle:
            def __reduce__(self):
                done.wait()
                return (int, (0,))
        def f(*a):
            return 0
        pool = cpool.Pool(2)
        big = b"x" * (1 << 20)
        pool.apply(f, (big,))          # a recycled task segment, now free
        def submitter():
            try:
                pool.apply_async(f, (big[:len(big) // 2], SlowToPickle()))
            except ValueError as e:
                print("refused:", e)
        t = threading.Thread(target=submitter)
        t.start()
        time.sleep(0.2)                # it passed the running check, it is pickling
        pool.terminate(); pool.join()
        done.set(); t.join()
        print("survived")
    """)
    assert out.split("\n")[-2:] == ["survived", ""] and "refused: Pool not running" in out


def test_a_callback_outcome_is_not_stranded_while_another_thread_polls():
    # Thread B polls a long task with get(timeout=tiny), collecting almost all
    # the time; outcomes with callbacks that B drains are left to the
    # collector thread, which must get them out (it once never did).
    out = run_scenario("""
        import threading, time, cpool
        def work(t):
            time.sleep(t)
            return t
        p = cpool.Pool(2)
        long = p.apply_async(work, (1000,))
        stop = False
        def poller():
            while not stop:
                try:
                    long.get(timeout=0.0005)
                except cpool.TimeoutError:
                    pass
        threading.Thread(target=poller, daemon=True).start()
        time.sleep(0.1)
        fine = 0
        for attempt in range(20):
            fired = threading.Event()
            r = p.apply_async(work, (0.005,), callback=lambda v: fired.set())
            try:
                r.get(timeout=5)
                fine += fired.is_set()
            except cpool.TimeoutError:
                break
        stop = True
        print("fine", fine)
        p.terminate()
    """, timeout=150)
    assert out.split() == ["fine", "20"], out


# The window between a waiter's look at its result and its collect(): the
# collector thread delivers the outcome there, and the waiter then collected
# for news that would never come (seen under ASan, where everything is
# slower: test_refleaks' imap hung one run in ten).  Here the window is held
# open on purpose: the core the waiter calls lets the collector thread
# deliver first, then collects.
LATE_COLLECT = """
    import time, cpool

    class Late:
        '''A core whose collect() first lets the collector thread deliver
        what the caller waits for (done()), as a waiter preempted between
        its look and its collect would.'''
        def __init__(self, core, done):
            self._core, self._done = core, done
            self.late = 0
        def __getattr__(self, name):
            return getattr(self._core, name)
        def collect(self, *args):
            end = time.monotonic() + 10
            while not self._done() and time.monotonic() < end:
                time.sleep(0.01)
            assert self._done(), "the collector thread did not deliver"
            self.late += 1
            return self._core.collect(*args)

    def square(x):
        return x * x

    if __name__ == "__main__":
        with cpool.Pool(2) as pool:
            pool.map(square, range(4))
            {case}
            assert late.late >= 1, "the window was not held open"
            print("ok", pool.apply(square, (5,)))
"""


def test_an_apply_delivered_by_the_collector_just_before_a_waiter_collects():
    out = run_scenario(LATE_COLLECT.replace("{case}", """
            r = pool.apply_async(time.sleep, (0.2,))
            r._core = late = Late(r._core, lambda: r._ready)
            r.wait()
            assert r.ready() and r.get() is None"""), timeout=30)
    assert out.split() == ["ok", "25"], out


def test_an_imap_chunk_delivered_by_the_collector_just_before_its_consumer_collects():
    out = run_scenario(LATE_COLLECT.replace("{case}", """
            it = pool.imap(time.sleep, [0.2, 0.2])
            it._core = late = Late(it._core, lambda: it._delivered == 2)
            assert list(it) == [None, None]"""), timeout=30)
    assert out.split() == ["ok", "25"], out
