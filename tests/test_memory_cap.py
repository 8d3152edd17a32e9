"""max_memory_per_child=: a worker over the cap after a task finishes it
normally and is replaced before its next one; one that grows past twice the
cap during a task is killed, and that task fails with a WorkerLostError that
names the cap (or runs again, with retries=)."""
import mmap
import os
import time

import pytest

import cpool
from conftest import run_scenario

MiB = 1 << 20

_kept = []


def keep(mib):
    """Grow by `mib` MiB that stay after the task; the worker's pid."""
    _kept.append(bytearray(mib * MiB))
    return os.getpid()


def balloon(mib, runs=None, hold=0.0):
    """Grow to `mib` MiB within the task, a MiB at a time (the first run
    only, when `runs` counts them), and stay there `hold` seconds (the
    parent looks every 0.1 s); the size reached."""
    if runs is not None:
        with runs.get_lock():
            runs.value += 1
            if runs.value > 1:
                return 0
    b = bytearray()
    for _ in range(mib):
        b += bytearray(MiB)
        time.sleep(0.001)
    time.sleep(hold)
    return len(b)


def fresh_rss(method):
    """A new worker's resident memory: what a cap is set above (a build
    with sanitizers starts far bigger)."""
    with cpool.Pool(1, context=method) as pool:
        pool.apply(abs, (1,))
        return pool.stats().workers[0].rss


# Resident memory counts what a forked worker shares with its parent: the
# scenarios run in fresh interpreters, whose workers start small whatever
# the size of the test process.  BASE: a fresh worker's; CAP: 100 MiB more.
SCENARIO_HEAD = """
import os, sys, time
sys.path.insert(0, %r)
import cpool
from test_memory_cap import MiB, balloon, fresh_rss, grow_and_drop, keep
if __name__ == "__main__":
    BASE = fresh_rss({method})
    CAP = BASE + 100 * MiB
    PAST_TWICE = (BASE + 250 * MiB) // MiB   # MiB to allocate to pass 2 * CAP
""" % os.path.dirname(os.path.abspath(__file__))


def scenario(body, method, tmp_path):
    import textwrap
    return run_scenario(SCENARIO_HEAD + textwrap.indent(textwrap.dedent(body), "    "),
                        method=method, tmp_path=tmp_path, timeout=50)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_over_the_cap_after_a_task(method, tmp_path):
    scenario("""
        with cpool.Pool(1, context={method}, max_memory_per_child=CAP) as pool:
            first = pool.apply(keep, (10,))
            assert pool.apply(keep, (10,)) == first          # under the cap: the same
            assert pool.apply(keep, (100,)) == first         # its result arrives...
            assert pool.apply(keep, (1,)) != first           # ...then a new worker
            s = pool.stats()
            assert s.workers[0].respawns == 1 and s.lost == 0 and s.failed == 0, s
    """, method, tmp_path)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_past_twice_the_cap_during_a_task(method, tmp_path):
    scenario("""
        with cpool.Pool(2, context={method}, max_memory_per_child=CAP) as pool:
            try:
                pool.apply(balloon, (PAST_TWICE, None, 20))
            except cpool.WorkerLostError as e:
                assert "killed by cpool" in str(e) and "max_memory_per_child" in str(e), e
                assert e.signal == 9
            else:
                raise AssertionError("no WorkerLostError")
            assert pool.map(abs, range(-4, 0)) == [4, 3, 2, 1]
            assert pool.apply(balloon, (20,)) == 20 * MiB    # under the cap: fine
            runs = cpool.Value("i", 0)
            assert pool.apply(balloon, (PAST_TWICE, runs, 20), retries=1) == 0
            assert runs.value == 2
            s = pool.stats()
            assert s.lost == 1 and s.retried == 1, s
    """, method, tmp_path)


def test_tasks_queued_behind_a_worker_that_leaves_are_not_lost(tmp_path):
    scenario("""
        with cpool.Pool(2, max_memory_per_child=BASE + 40 * MiB) as pool:
            sizes = [50 if i % 7 == 0 else 0 for i in range(60)]
            pids = pool.map(keep, sizes, chunksize=1)
            assert len(pids) == 60 and len(set(pids)) > 2    # workers were replaced
            s = pool.stats()
            assert s.done == 60 and s.lost == 0 and s.failed == 0, s
            assert sum(w.respawns for w in s.workers) >= 4, s
    """, "fork", tmp_path)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError),
                                        ("1", TypeError), (True, TypeError),
                                        (1.5, TypeError)])
def test_bad_caps_are_clear_errors(bad, error):
    with pytest.raises(error, match="max_memory_per_child"):
        cpool.Pool(1, max_memory_per_child=bad)
    with cpool.Pool(1, max_memory_per_child=None) as pool:
        assert pool.apply(abs, (-2,)) == 2


def grow_and_drop(mib):
    """Grow by `mib` MiB at once, stay there 0.3 s (the parent looks every
    0.1 s), and give it all back before returning; the pid.  The memory is
    an anonymous mapping, not malloc's: unmapped, it leaves the resident set
    at once under any allocator (ASan's keeps freed blocks in quarantine,
    and its realloc copies, which made balloon()'s growth take seconds)."""
    m = mmap.mmap(-1, mib * MiB)
    try:
        page = bytes(MiB)
        for _ in range(mib):
            m.write(page)               # touched: resident
        time.sleep(0.3)
    finally:
        m.close()
    return os.getpid()


@pytest.mark.parametrize("window", ["found", "claimed"])
def test_a_kill_for_memory_never_hits_the_next_task(window, tmp_path):
    """The parent reads a worker's memory while one task runs and kills it
    a moment later: a worker that ended that task and took the next one in
    that moment must not lose the next one for its predecessor's memory.
    The parent is held 2 s in each window (after reading the memory, after
    claiming the worker for the kill) while the task ends and the worker,
    back under the cap, takes the next ones, already in its ring (the
    first task ends within 0.5 s of passing twice the cap, the third runs
    past the window).  Before the compare-and-swap, the third task failed
    with "killed by cpool"."""
    scenario("""
        found, claimed = WINDOW == "found", WINDOW == "claimed"
        cpool._cpool._pause_memory_check(2.0 * found, 2.0 * claimed)
        with cpool.Pool(1, max_memory_per_child=CAP) as pool:
            for i in range(50):     # short tasks: the next ones are sent at once,
                pool.apply(abs, (i,))   # to wait in the worker's ring
            first = pool.apply_async(grow_and_drop, (PAST_TWICE,))
            second = pool.apply_async(os.getpid)
            third = pool.apply_async(time.sleep, (3.0,))
            pid = first.get(timeout=20)
            # Found: the worker went on, and is left alone; claimed: it
            # waited for its kill, and the next tasks went to its successor.
            assert (second.get(timeout=20) == pid) == found
            assert third.get(timeout=20) is None      # not "killed by cpool"
            s = pool.stats()
            assert s.lost == 0 and s.failed == 0, s
            assert s.workers[0].respawns == claimed, s
        assert cpool._cpool._pause_memory_check(0, 0) >= 1   # the window was held
    """.replace("WINDOW", repr(window)), "fork", tmp_path)
