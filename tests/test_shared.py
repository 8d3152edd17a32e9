"""cpool's shared types: Value, Array, RawValue, RawArray, Lock, RLock.

What multiprocessing's cannot do (go to a Pool task or a spawned Process as
an argument, survive a dead lock holder) and what they must do the same
(typecodes, errors), checked side by side with multiprocessing.sharedctypes.
Scenarios with child processes run under a time limit.
"""
import array
import ctypes
import multiprocessing
import multiprocessing.sharedctypes as mpsc
import os
import pickle
import signal
import subprocess
import threading
import time

import pytest

import cpool
from conftest import read_line, run_python, start_python

N = 10_000
TYPECODES = "cbBhHiIlLqQfd" + "u"


def add_under_lock(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def add_to_array(arr, n):
    for _ in range(n):
        with arr.get_lock():
            for i in range(len(arr)):
                arr[i] += 1


def hold_and_die(lock, how):
    lock.acquire()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def read_value(v):
    return v.value


def write_value(v, x):
    v.value = x


# -- across processes -------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_four_processes_add_exactly_under_each_start_method(method):
    ctx = multiprocessing.get_context(method)
    v = cpool.Value("i", 0)
    arr = cpool.Array("q", 3)
    procs = [ctx.Process(target=add_under_lock, args=(v, N)) for _ in range(4)]
    procs.append(ctx.Process(target=add_to_array, args=(arr, 1000)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert v.value == 4 * N
    assert list(arr) == [1000] * 3


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_four_workers_add_exactly_as_pool_task_arguments(method):
    v = cpool.Value("i", 0)
    with cpool.Pool(4, context=method) as pool:
        pool.starmap_async(add_under_lock, [(v, N)] * 4).get(timeout=60)
        assert v.value == 4 * N
        # and back: a worker reads what the parent wrote
        v.value = -17
        assert pool.apply_async(read_value, (v,)).get(timeout=30) == -17
        pool.apply_async(write_value, (v, 99)).get(timeout=30)
        assert v.value == 99
    pool.join()


def test_raw_array_and_char_array_as_task_arguments():
    raw = cpool.RawArray("d", [0.5] * 4)
    text = cpool.Array("c", b"hello world")
    with cpool.Pool(2) as pool:
        assert pool.apply_async(sum, (raw,)).get(timeout=30) == 2.0
        assert pool.apply_async(bytes, (text.get_obj(),)).get(timeout=30) == b"hello world"
    pool.join()


@pytest.mark.parametrize("how", ["sigkill", "exit"])
@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_of_a_dead_holder_is_taken_over(kind, how):
    lock = getattr(cpool, kind)()
    p = multiprocessing.get_context("spawn").Process(target=hold_and_die, args=(lock, how))
    p.start()
    p.join(60)
    assert p.exitcode in (-signal.SIGKILL, 3)
    t0 = time.monotonic()
    assert lock.acquire(timeout=5) is True
    assert time.monotonic() - t0 < 4
    assert lock.owner_died is True
    lock.release()
    assert lock.acquire(timeout=1) is True and lock.owner_died is False
    lock.release()


def test_value_lock_of_a_dead_holder_is_taken_over():
    v = cpool.Value("i", 5)
    p = multiprocessing.get_context("fork").Process(target=hold_and_die,
                                                    args=(v.get_lock(), "sigkill"))
    p.start()
    p.join(60)
    with v.get_lock():   # would block forever with a lock left held
        assert v.get_lock().owner_died
        v.value += 1
    assert v.value == 6


# -- pickling ------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: cpool.Value("d", 2.5),
    lambda: cpool.Array("i", range(10)),
    lambda: cpool.Array("c", b"abc"),
    lambda: cpool.RawValue("q", 7),
    lambda: cpool.RawArray("h", [1, 2, 3]),
])
def test_pickle_round_trip_shares_the_memory(make):
    obj = make()
    clone = pickle.loads(pickle.dumps(obj))
    assert type(clone) is type(obj)
    target = clone.get_obj() if hasattr(clone, "get_obj") else clone
    source = obj.get_obj() if hasattr(obj, "get_obj") else obj
    assert ctypes.addressof(target) == ctypes.addressof(source)
    assert bytes(memoryview(target)) == bytes(memoryview(source))


def test_pickled_lock_is_the_same_lock():
    lock = cpool.Lock()
    clone = pickle.loads(pickle.dumps(lock))
    assert lock.acquire()
    assert clone.acquire(False) is False
    lock.release()
    assert clone.acquire(False) is True
    clone.release()


def test_a_child_can_pass_it_on(tmp_path):
    # A spawned child re-pickles what it received to its own child.
    p = run_python("""
        import multiprocessing as mp, cpool
        def grandchild(v):
            v.value = 42
        def child(v):
            p = mp.get_context("spawn").Process(target=grandchild, args=(v,))
            p.start(); p.join()
        if __name__ == "__main__":
            v = cpool.Value("i", 0)
            p = mp.get_context("spawn").Process(target=child, args=(v,))
            p.start(); p.join()
            print(v.value)
    """, 60, script=tmp_path / "relay.py")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "42"


# -- the multiprocessing.sharedctypes surface -----------------------------------------

@pytest.mark.parametrize("code", TYPECODES)
def test_every_typecode_matches_multiprocessing(code):
    init = {"c": b"x", "u": "y", "f": 1.5, "d": -2.25}.get(code, 7)
    ours, theirs = cpool.Value(code, init), multiprocessing.Value(code, init)
    assert ours.value == theirs.value
    assert type(ours.get_obj()).__mro__[1] is type(theirs.get_obj())
    raw = cpool.RawArray(code, 5)
    assert list(raw) == list(multiprocessing.RawArray(code, 5))
    assert len(raw) == 5


@pytest.mark.parametrize("args", [
    ("x", 1),            # unknown typecode
    ("i", "str"),        # wrong type
    ("i", 1.5),
    ("d", "nan"),
    ("c", 300),
    ("c", b"toolong"),
])
def test_bad_values_raise_as_multiprocessing(args):
    with pytest.raises(Exception) as theirs:
        multiprocessing.Value(*args)
    with pytest.raises(Exception) as ours:
        cpool.Value(*args)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("value", [2 ** 31, -2 ** 31 - 1, 2 ** 64 + 5])
def test_out_of_range_integers_behave_as_multiprocessing(value):
    ours, theirs = cpool.Value("i", 0), multiprocessing.Value("i", 0)
    ours.value = value
    theirs.value = value
    assert ours.value == theirs.value


def test_array_errors_match_multiprocessing():
    for make in (lambda m: m.Array("i", 3), lambda m: m.RawArray("i", 3)):
        for op in (lambda a: a[3], lambda a: a.__setitem__(0, "x"),
                   lambda a: a.__setitem__(slice(0, 2), [1, 2, 3])):
            with pytest.raises(Exception) as theirs:
                op(make(multiprocessing))
            with pytest.raises(Exception) as ours:
                op(make(cpool))
            assert type(ours.value) is type(theirs.value)
    with pytest.raises(AttributeError):
        cpool.Array("i", 3, lock="notalock")


def test_indexing_slicing_iteration_and_strings():
    seq = [5, 1, 4, 2, 3]
    arr = cpool.Array("i", seq)
    ref = mpsc.Array("i", seq)
    assert len(arr) == len(ref) == 5
    assert arr[1:4] == ref[1:4] and arr[-1] == ref[-1] and list(arr) == list(ref)
    arr[1:3] = ref[1:3] = array.array("i", [9, 8])
    assert list(arr) == list(ref)
    s = cpool.Array("c", 8)
    s.value = b"hi"
    assert s.value == b"hi" and s.raw == b"hi" + b"\0" * 6
    s.raw = b"abcdefgh"
    assert s.value == b"abcdefgh"


def test_structures_and_ctypes_types():
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]
    p = cpool.Value(Point, 1, 2.5)
    assert (p.x, p.y) == (1, 2.5)
    p.x = 7
    assert p.get_obj().x == 7
    v = cpool.Value(ctypes.c_ulonglong, 2 ** 63)
    assert v.value == 2 ** 63
    arr = cpool.Array(ctypes.c_double, [1.0, 2.0])
    assert list(arr) == [1.0, 2.0]


def test_lock_options():
    lock = cpool.Lock()
    v = cpool.Value("i", 1, lock=lock)
    assert v.get_lock() is lock
    assert type(cpool.Value("i", 1).get_lock()) is cpool.RLock
    assert type(cpool.Value("i", 1, lock=None).get_lock()) is cpool.RLock
    raw = cpool.Value("i", 1, lock=False)
    assert not hasattr(raw, "get_lock") and raw.value == 1
    tlock = threading.Lock()   # any lock with acquire/release will do
    tv = cpool.Value("i", 1, lock=tlock)
    with tv:
        assert tlock.locked()
    tv.value = 3
    assert tv.value == 3 and not tlock.locked()


def test_lock_semantics():
    lock = cpool.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert 0.15 < time.monotonic() - t0 < 3
    lock.release()
    with pytest.raises(ValueError):
        lock.release()
    rlock = cpool.RLock()
    assert rlock.acquire() and rlock.acquire()
    rlock.release()
    rlock.release()
    with pytest.raises(AssertionError):
        rlock.release()
    with lock:
        assert lock.acquire(False) is False


def test_lock_timeouts_at_the_edges():
    """Timeouts go through the module's one parser: a negative one is 0
    (multiprocessing's), a huge one waits as long as it must (no overflow),
    NaN is refused; the lock works after each."""
    lock = cpool.Lock()
    assert lock.acquire(timeout=1e300) is True          # free: taken at once
    t0 = time.monotonic()
    assert lock.acquire(timeout=-5) is False            # held: no wait
    assert time.monotonic() - t0 < 1
    with pytest.raises(ValueError, match="NaN"):
        lock.acquire(timeout=float("nan"))
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")
    lock.release()
    assert lock.acquire(timeout=0) is True
    lock.release()


def test_waiting_on_a_lock_releases_the_gil():
    lock = cpool.Lock()
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=2)))
    t.start()
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.3:
        n += 1          # this thread keeps running Python meanwhile
    lock.release()
    t.join(10)
    assert got == [True] and n > 1000


def test_ctrl_c_interrupts_a_blocked_acquire():
    p = start_python("""
        import cpool
        lock = cpool.Lock()
        lock.acquire()
        print("waiting", flush=True)
        try:
            lock.acquire()      # held (by us): blocks, as threading.Lock would
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    assert read_line(p) == "waiting"
    time.sleep(0.3)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("Ctrl-C did not interrupt a blocked acquire()")
    assert out.strip() == "interrupted"
    assert time.monotonic() - t0 < 2


# -- nothing left behind ---------------------------------------------------------------

def test_storage_is_anonymous_memory():
    v = cpool.Value("i", 1)
    arena = v.get_obj()._cpool_ref[0]
    assert os.readlink(f"/proc/self/fd/{arena.fd}").startswith("/memfd:cpool-shared")


def test_nothing_left_after_normal_exit_or_sigkill():
    # Only the children's own names count: other processes on the machine
    # may have segments of their own in /dev/shm meanwhile.
    def left_by(pid):
        return [n for n in os.listdir("/dev/shm") if f".{pid}." in n or n.endswith(f".{pid}")]

    src = """
        import os, time, sys, cpool
        vals = [cpool.Value("d", i) for i in range(100)]
        big = cpool.Array("b", 10 * 1024 * 1024)
        locks = [cpool.RLock() for _ in range(10)]
        print(os.getpid(), flush=True)
        if sys.argv[1] == "wait":
            time.sleep(60)
    """
    done = run_python(src, 60, args=["exit"])
    assert done.returncode == 0, done.stderr
    assert left_by(int(done.stdout)) == []
    p = start_python(src, args=["wait"])
    pid = int(read_line(p))
    memfds = [f for f in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{f}").startswith("/memfd:cpool")]
    assert memfds, "the shared memory should be memfds"
    assert left_by(pid) == []        # nothing named, even while it runs
    p.kill()
    p.communicate(timeout=10)
    assert left_by(pid) == []
