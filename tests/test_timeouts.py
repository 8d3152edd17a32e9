"""task_timeout=: an item (an apply, or one item of a map, also inside a
chunk) that runs past its limit gets TaskTimeoutError raised inside it; a
worker that does not stop within the grace period is killed and replaced.
Either way only that item fails: the rest of its chunk arrives, no later
task of the worker is touched, and the pool goes on.

The scenarios run in fresh interpreters under a time limit (a hang fails
them), under fork and spawn."""
import math
import multiprocessing
import os
import textwrap
import threading
import time

import pytest

import cpool
from cpool import _cpool
from conftest import run_scenario

GRACE = 1.0     # CP_STOP_GRACE_NS


def sleeper(x, at=(), flag=None, secs=30.0):
    """x * 10; an item in `at` sleeps `secs` first, and counts in `flag` (a
    cpool Value) that its finally: block ran."""
    if x in at:
        try:
            time.sleep(secs)
        finally:
            if flag is not None:
                with flag.get_lock():
                    flag.value += 1
    return x * 10


def stubborn(x, at=(), runs=None):
    """x * 10, counting its runs per item in `runs` (a cpool Array); an
    item in `at` ignores every exception for 30 s (a soft stop is not
    enough: its worker must be killed)."""
    if runs is not None:
        with runs.get_lock():
            runs[x] += 1
    if x in at:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except BaseException:
                pass
    return x * 10


def stubborn_big(x, blob, at=()):
    """stubborn for starmap items that carry a large payload (their chunk
    travels through a segment)."""
    return stubborn(x, at) + len(blob)


def outcomes(it, n):
    """The n outcomes of an imap iterator: values, or the exceptions
    next() raised, in order."""
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except cpool.TaskTimeoutError as e:
            out.append(e)
    with pytest.raises(StopIteration):
        next(it)
    return out


SCENARIO_HEAD = """
import os, sys, time
sys.path.insert(0, %r)
import cpool
from cpool import _cpool
from test_timeouts import GRACE, _star_big, outcomes, sleeper, stubborn, stubborn_big
if __name__ == "__main__":
""" % os.path.dirname(os.path.abspath(__file__))


def scenario(body, method, tmp_path):
    return run_scenario(SCENARIO_HEAD + textwrap.indent(textwrap.dedent(body), "    "),
                        method=method, tmp_path=tmp_path, timeout=50)


METHODS = pytest.mark.parametrize("method", ["fork", "spawn"])


@METHODS
def test_apply_past_its_limit_is_stopped_inside(method, tmp_path):
    scenario("""
        flag = cpool.Value("i", 0)
        with cpool.Pool(1, context={method}) as pool:
            pid = pool.apply(os.getpid)
            t0 = time.monotonic()
            try:
                pool.apply(sleeper, (3, (3,), flag), task_timeout=0.3)
            except cpool.TaskTimeoutError as e:
                err = e
            took = time.monotonic() - t0
            assert 0.3 <= took < 0.3 + GRACE, took
            assert isinstance(err, TimeoutError) and not isinstance(err, cpool.TimeoutError)
            assert (err.pid, err.item, err.killed) == (pid, None, False), vars(err)
            assert 0.3 <= err.elapsed < took and abs(err.timeout - 0.3) < 1e-6, vars(err)
            assert "past its time limit of 0.3 s" in str(err), err
            assert "time.sleep" in str(err.__cause__), err.__cause__   # where it stopped
            assert flag.value == 1                   # its finally: ran
            assert pool.apply(os.getpid) == pid      # the same worker goes on
            assert pool.apply(sleeper, (2,), task_timeout=0.3) == 20
            s = pool.stats()
            assert (s.timed_out, s.failed, s.lost, s.workers[0].respawns) == (1, 1, 0, 0), s
    """, method, tmp_path)


@METHODS
def test_task_that_ignores_the_stop_is_killed(method, tmp_path):
    scenario("""
        with cpool.Pool(1, context={method}, retries=2) as pool:
            runs = cpool.Array("i", 4)
            pid = pool.apply(os.getpid)
            t0 = time.monotonic()
            try:
                pool.apply(stubborn, (3, (3,), runs), task_timeout=0.3)
            except cpool.TaskTimeoutError as e:
                err = e
            took = time.monotonic() - t0
            assert 0.3 + GRACE <= took < 0.3 + GRACE + 3, took
            assert (err.pid, err.item, err.killed) == (pid, None, True), vars(err)
            assert "was killed" in str(err), err
            assert runs[3] == 1                      # not retried: the limit is its own
            end = time.monotonic() + 20
            while pool.stats().workers[0].state != "ready" and time.monotonic() < end:
                time.sleep(0.01)
            s = pool.stats()                         # its successor runs nothing yet
            assert s.running == 0 and s.workers[0].current is None, s
            assert pool.apply(os.getpid) != pid      # replaced
            assert pool.map(sleeper, range(6)) == [x * 10 for x in range(6)]
            s = pool.stats()
            assert (s.timed_out, s.lost, s.retried, s.workers[0].respawns) == (1, 0, 0, 1), s
    """, method, tmp_path)


@METHODS
def test_item_in_the_middle_of_a_chunk_the_others_arrive(method, tmp_path):
    scenario("""
        flag = cpool.Value("i", 0)
        from functools import partial
        with cpool.Pool(2, context={method}) as pool:
            f = partial(sleeper, at=(4,))
            it = pool.imap(f, range(10), chunksize=10, task_timeout=0.3)
            got = outcomes(it, 10)
            err = got[4]
            assert isinstance(err, cpool.TaskTimeoutError) and err.item == 4, got
            assert not err.killed
            assert got[:4] + got[5:] == [x * 10 for x in range(10) if x != 4], got
            # starmap: the first item past its limit fails the call
            try:
                pool.starmap(sleeper, [(x, (4, 7), flag) for x in range(10)],
                             chunksize=5, task_timeout=0.3)
            except cpool.TaskTimeoutError as e:
                assert e.item in (4, 7), vars(e)
            else:
                raise AssertionError("no TaskTimeoutError")
            end = time.monotonic() + 10   # (the other chunk may still be running)
            while flag.value < 2 and time.monotonic() < end:
                time.sleep(0.01)
            assert flag.value == 2, flag.value       # both stopped, both cleaned up
            # imap_unordered: every outcome arrives; the index is the input's
            f = partial(sleeper, at=(8,))
            it = pool.imap_unordered(f, range(12), chunksize=6, task_timeout=0.3)
            got = outcomes(it, 12)
            errs = [e.item for e in got if isinstance(e, cpool.TaskTimeoutError)]
            assert errs == [8], got
            assert sorted(v for v in got if isinstance(v, int)) == [
                x * 10 for x in range(12) if x != 8]
            assert pool.stats().timed_out == 4
    """, method, tmp_path)


@METHODS
def test_killed_in_the_middle_of_a_chunk_the_rest_is_sent_again(method, tmp_path):
    scenario("""
        from functools import partial
        with cpool.Pool(2, context={method}) as pool:
            runs = cpool.Array("i", 8)
            f = partial(stubborn, at=(3,), runs=runs)
            it = pool.imap(f, range(8), chunksize=8, task_timeout=0.3)
            got = outcomes(it, 8)
            err = got[3]
            assert isinstance(err, cpool.TaskTimeoutError), got
            assert (err.item, err.killed) == (3, True), vars(err)
            assert got[:3] + got[4:] == [x * 10 for x in range(8) if x != 3], got
            # the items before it ran again (their results died with the
            # worker), the one past its limit never did, the rest once
            assert list(runs) == [2, 2, 2, 1, 1, 1, 1, 1], list(runs)
            s = pool.stats()
            assert (s.timed_out, s.lost, s.retried) == (1, 0, 0), s
    """, method, tmp_path)


def test_the_index_of_an_item_past_its_limit_in_a_map_of_uneven_chunks(tmp_path):
    """A map given no chunksize cuts 100 items on 2 workers into 8 chunks,
    the first 4 of 13 items, the others of 12: item 70 is item 6 of chunk 5,
    which starts at 64 (not at 5 * 13).  Its TaskTimeoutError names 70,
    whether it stopped itself or its worker was killed."""
    scenario("""
        from functools import partial
        from cpool.pool import _default_chunks
        assert _default_chunks(100, 2, fine=True) == (13, 8)
        with cpool.Pool(2, context={method}) as pool:
            for f, killed in ((partial(sleeper, at=(70,)), False),
                              (partial(stubborn, at=(70,)), True)):
                try:
                    pool.map(f, range(100), task_timeout=0.3)
                except cpool.TaskTimeoutError as e:
                    assert (e.item, e.killed) == (70, killed), vars(e)
                else:
                    raise AssertionError("no TaskTimeoutError")
            assert pool.map(sleeper, range(100)) == [x * 10 for x in range(100)]
    """, "fork", tmp_path)


def test_two_items_of_one_chunk_killed(tmp_path):
    scenario("""
        from functools import partial
        with cpool.Pool(1, context={method}) as pool:
            runs = cpool.Array("i", 7)
            f = partial(stubborn, at=(1, 5), runs=runs)
            got = outcomes(pool.imap(f, range(7), chunksize=7, task_timeout=0.2), 7)
            assert [e.item for e in got if isinstance(e, Exception)] == [1, 5], got
            assert [v for v in got if not isinstance(v, Exception)] == [0, 20, 30, 40, 60]
            assert list(runs) == [3, 1, 2, 2, 2, 1, 1], list(runs)
            assert pool.stats().workers[0].respawns == 2
    """, "fork", tmp_path)


def test_large_chunk_killed_and_sent_again(tmp_path):
    """A chunk whose pickle travels through a segment, with its time limit
    ahead of the segment's reference, killed and sent again."""
    scenario("""
        blob = bytes(200_000)       # a chunk of these goes through a segment
        with cpool.Pool(2, context={method}) as pool:
            items = [(x, blob, (2,)) for x in range(4)]
            got = outcomes(pool.imap(_star_big, items, chunksize=4, task_timeout=0.2), 4)
            assert isinstance(got[2], cpool.TaskTimeoutError) and got[2].killed, got
            assert [got[i] for i in (0, 1, 3)] == [200_000, 200_010, 200_030], got
            assert pool.starmap(stubborn_big, [(x, blob) for x in range(3)],
                                task_timeout=5) == [200_000, 200_010, 200_020]
            assert pool.stats().timed_out == 1
    """, "fork", tmp_path)


def _star_big(args):
    return stubborn_big(*args)


def test_pool_limit_and_per_call_override():
    with cpool.Pool(1, task_timeout=0.3) as pool:
        with pytest.raises(cpool.TaskTimeoutError):
            pool.apply(sleeper, (1, (1,)))
        # per call: a longer limit, or the pool's when None
        assert pool.apply(sleeper, (1, (1,), None, 0.6), task_timeout=5) == 10
        with pytest.raises(cpool.TaskTimeoutError):
            pool.apply(sleeper, (1, (1,)), task_timeout=None)
        assert pool.map(sleeper, range(4)) == [0, 10, 20, 30]
    # no limit: a pool without one never stops a task
    with cpool.Pool(1) as pool:
        assert pool.apply(sleeper, (1, (1,), None, 0.5)) == 10
        assert pool.stats().timed_out == 0


def test_get_timeout_keeps_its_meaning():
    with cpool.Pool(1) as pool:
        r = pool.apply_async(sleeper, (1, (1,), None, 0.5), task_timeout=10)
        with pytest.raises(cpool.TimeoutError) as info:
            r.get(0.05)
        assert isinstance(info.value, multiprocessing.TimeoutError)
        assert not isinstance(info.value, cpool.TaskTimeoutError)
        assert r.get(10) == 10      # the caller's wait ended, not the task


def test_a_stray_stop_signal_touches_no_task():
    """The stop signal raises only in the item the parent asked to stop: a
    signal for another (late, or sent by hand) changes nothing."""
    with cpool.Pool(1) as pool:
        pid = pool.apply(os.getpid)
        for timeout in (10, None):
            r = pool.apply_async(sleeper, (1, (1,), None, 0.6), task_timeout=timeout)
            time.sleep(0.2)
            for _ in range(3):
                os.kill(pid, _cpool.STOP_SIGNAL)
                time.sleep(0.05)
            assert r.get(10) == 10
        assert pool.apply(os.getpid) == pid
        assert pool.stats().timed_out == 0


def test_next_item_after_a_stopped_one_runs_whole():
    """Stopping an item never reaches into the next one of its chunk."""
    with cpool.Pool(1) as pool:
        items = [(0, (0,), None, 30.0), (1, (1,), None, 0.5), (2, (2,), None, 0.5)]
        it = pool.imap(_star_sleeper, items, chunksize=3, task_timeout=0.8)
        got = outcomes(it, 3)
        assert isinstance(got[0], cpool.TaskTimeoutError) and got[1:] == [10, 20], got


def blocks_the_stop(x):
    """Item 0 runs past its limit with the stop signal blocked (as C code
    that never looks at signals would), and ends within the grace period;
    item 1 unblocks it: the stop meant for item 0 arrives in item 1."""
    import signal
    if x == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, [_cpool.STOP_SIGNAL])
        time.sleep(0.6)
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [_cpool.STOP_SIGNAL])
        time.sleep(0.2)
    return x, os.getpid()


def test_a_stop_that_arrives_late_touches_the_next_item_not():
    with cpool.Pool(1) as pool:
        pid = pool.apply(os.getpid)
        got = pool.map(blocks_the_stop, [0, 1], chunksize=2, task_timeout=0.3)
        assert got == [(0, pid), (1, pid)], got
        assert pool.stats().timed_out == 0


def timed_sleeper(x, ran):
    """Sleep long; its finally: notes in ran[x] how long it ran (ms)."""
    t = time.monotonic()
    try:
        time.sleep(30)
    finally:
        ran[x] = int((time.monotonic() - t) * 1000)


def _star_first_stubborn(args):
    x, ran = args
    return stubborn(x, (0,)) if x == 0 else timed_sleeper(x, ran)


def test_an_item_after_a_skipped_first_is_watched_at_once():
    """A chunk sent again without its first item (its worker was killed
    there): the second item's limit is watched from its start, though
    nobody waits in get() (callbacks only: cpool's collector thread, which
    otherwise sleeps a second at a time)."""
    with cpool.Pool(1) as pool:
        for _ in range(2):
            ran = cpool.Array("i", 2)
            done = threading.Event()
            pool.map_async(_star_first_stubborn, [(0, ran), (1, ran)], chunksize=2,
                           task_timeout=0.3, callback=lambda v: done.set(),
                           error_callback=lambda e: done.set())
            assert done.wait(30)
            assert 300 <= ran[1] < 750, list(ran)


def test_items_counted_once_when_their_chunk_runs_again():
    """An item stopped, then its chunk killed at a later item and sent
    again: the stopped item runs (and stops) again, counted once."""
    with cpool.Pool(1) as pool:
        items = [(0, (0,), None, 30.0), (1, (1,)), (2, ())]
        got = outcomes(pool.imap(_star_mixed, items, chunksize=3, task_timeout=0.3), 3)
        assert [type(v).__name__ for v in got] == ["TaskTimeoutError"] * 2 + ["int"], got
        assert not got[0].killed and got[1].killed
        assert pool.stats().timed_out == 2


def _star_mixed(args):
    """sleeper for items of 4, stubborn for items of 2."""
    return sleeper(*args) if len(args) == 4 else stubborn(*args)


def _star_sleeper(args):
    return sleeper(*args)


def test_stubborn_with_retries_runs_once(tmp_path):
    """A time limit is the task's own: retries= does not run it again."""
    runs = cpool.Array("i", 3)
    with cpool.Pool(2, retries=3) as pool:
        r = pool.map_async(_star_stubborn, [(x, (1,), runs) for x in range(3)],
                           chunksize=1, task_timeout=0.2)
        with pytest.raises(cpool.TaskTimeoutError):
            r.get(20)
        time.sleep(0.2)
        assert list(runs) == [1, 1, 1]
        assert pool.stats().retried == 0


def _star_stubborn(args):
    return stubborn(*args)


BAD = [(0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
       ("1", TypeError), (True, TypeError), ([1], TypeError)]


@pytest.mark.parametrize("bad,exc", BAD)
def test_bad_task_timeout(bad, exc):
    with pytest.raises(exc, match="task_timeout"):
        cpool.Pool(1, task_timeout=bad)
    with cpool.Pool(1) as pool:
        for call in (lambda: pool.apply(abs, (1,), task_timeout=bad),
                     lambda: pool.apply_async(abs, (1,), task_timeout=bad),
                     lambda: pool.map(abs, [1], task_timeout=bad),
                     lambda: pool.starmap(abs, [(1,)], task_timeout=bad),
                     lambda: pool.imap(abs, [1], task_timeout=bad),
                     lambda: pool.imap_unordered(abs, [1], task_timeout=bad)):
            with pytest.raises(exc, match="task_timeout"):
                call()
        assert pool.map(abs, [-1, -2], task_timeout=1) == [1, 2]   # usable after
        assert pool.apply(abs, (-3,), task_timeout=1.5) == 3


def test_progress_counts_an_item_past_its_limit():
    seen = []
    with cpool.Pool(2) as pool:
        it = pool.imap(_star_sleeper, [(x, (2,), None, 30.0) for x in range(6)],
                       chunksize=3, task_timeout=0.3, progress=lambda d, t: seen.append(d))
        got = outcomes(it, 6)
        assert isinstance(got[2], cpool.TaskTimeoutError)
        assert seen[-1] == 6, seen
