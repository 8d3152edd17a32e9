"""What crosses between processes comes back the same: types, values and
sharing.  Plain data (exact None/bool/int/float/complex/str/bytes and
tuples, lists, dicts of them) travels as marshal, everything else as a
protocol-5 pickle; the choice must never show."""
import enum
import math
import os
import pickle

import pytest

import cpool
from cpool import _cpool
from conftest import module_pool, run_threads
from procs import segment_fds, segments_mapped

T = 60


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


def identity(x):
    return x


def shape(x):
    """What the worker received, described from the inside."""
    if isinstance(x, list) and len(x) == 2:
        return type(x[0]).__name__, x[0] is x[1]
    return type(x).__name__, repr(x)


pool = module_pool(2)


PLAIN = [None, True, False, 0, -1, 2 ** 100, -(2 ** 70), 1.5, -0.0, float("inf"),
         3 + 4j, "", "text", "\udc80 surrogate", "é" * 300, b"", b"\x00" * 1000,
         (), (1, (2, (3,))), [], [1, [2, [3]]], {"a": 1, 2: [3]}, {(1, 2): "t"}]
NOT_PLAIN = [bytearray(b"ba"), Color.RED, MyStr("s"), {1, 2}, frozenset({3}),
             [bytearray(b"x")], ({"k": bytearray(b"v")},), [[[[[["deep"]]]]]],
             memoryview(b"mv").tobytes(), range(3)]


@pytest.mark.parametrize("value", PLAIN + NOT_PLAIN, ids=repr)
def test_values_cross_unchanged(pool, value):
    for got in (pool.apply(identity, (value,)),
                pool.map(identity, [value] * 3, chunksize=3)[1],
                next(pool.imap(identity, [value]))):
        assert type(got) is type(value)
        assert got == value or (got != got and value != value)
        assert repr(got) == repr(value)


class MyInt(int):
    pass


class MyFloat(float):
    pass


I64 = 2 ** 63
NUMBER_LISTS = [
    list(range(8)), list(range(-5, 300)), [I64 - 1, -I64] * 8,
    [0.5 * i for i in range(20)],
    [float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 1.7976931348623157e308] * 2,
    # not flat all through: the list falls back to marshal or pickle, whole
    list(range(20)) + [I64], list(range(20)) + [-I64 - 1], list(range(20)) + [True],
    list(range(20)) + [1.5], [1.5] * 20 + [1], list(range(20)) + [MyInt(3)],
    [0.5] * 20 + [MyFloat(2.5)], list(range(20)) + [None], list(range(7)),
]


@pytest.mark.parametrize("values", NUMBER_LISTS, ids=lambda v: repr(v[-3:]))
def test_lists_of_numbers_cross_unchanged(pool, values):
    """A list of exact ints that fit in 64 bits, or of exact floats, travels
    as a flat array: each way (a chunk of them, a result that is one), the
    types and values come back, and one that is not such a list all through
    takes the usual way, whole."""
    for got in (pool.apply(identity, (values,)),
                pool.map(identity, values, chunksize=len(values))):
        assert [type(x) for x in got] == [type(x) for x in values]
        assert repr(got) == repr(values)


SWITCHES = ["s", None, 1.5, 7, I64, -I64 - 1, True, MyInt(3), [1]]


def switch_at(i, at, value, first):
    """first(i) for the items of a chunk, value at item `at`."""
    return value if i == at else first(i)


@pytest.mark.parametrize("value", SWITCHES, ids=repr)
@pytest.mark.parametrize("at", [0, 1, 50, 99])
@pytest.mark.parametrize("first", [int, float], ids=["ints", "floats"])
def test_a_chunk_whose_results_change_kind_comes_back_whole(pool, first, at, value):
    """A worker writes a chunk's results flat as they come while they are
    numbers of the first one's kind; one that is not turns what it wrote
    back into objects, anywhere in the chunk: every result comes back, in
    order, of its type, from a range or a list, and through a starmap's
    rows."""
    import functools
    f = functools.partial(switch_at, at=at, value=value, first=first)
    want = [f(i) for i in range(100)]
    for items in (range(100), list(range(100))):
        got = pool.map(f, items, chunksize=100)
        assert repr(got) == repr(want)
        assert [type(x) for x in got] == [type(x) for x in want]
    got = pool.starmap(f, [(i,) for i in range(100)], chunksize=100)
    assert repr(got) == repr(want)


def raise_at_50(i):
    if i == 50:
        raise ValueError(f"item {i}")
    return i


def test_an_item_that_raises_mid_chunk_fails_the_map_and_the_pool_goes_on(pool):
    for items in (range(100), list(range(100))):
        with pytest.raises(ValueError, match="item 50"):
            pool.map(raise_at_50, items, chunksize=100)
    with pytest.raises(ValueError, match="item 50"):
        pool.starmap(raise_at_50, [(i,) for i in range(100)], chunksize=100)
    assert pool.map(raise_at_50, range(10, 20)) == list(range(10, 20))


_blocks_peak = 0


def note_blocks(i, *_):
    global _blocks_peak
    if i % 1000 == 0:
        import sys
        _blocks_peak = max(_blocks_peak, sys.getallocatedblocks())
    return i


def blocks_peak(reset):
    global _blocks_peak
    import sys
    peak, _blocks_peak = _blocks_peak, 0
    return sys.getallocatedblocks() if reset else peak


@pytest.mark.parametrize("how", ["range", "rows"])
def test_a_chunk_of_numbers_keeps_no_result_alive(how):
    """A chunk of 200,000 items whose results are numbers: the worker never
    holds all of them, nor a list of a range's items (it used to: 200,000
    ints at once, in memory the allocator had to fault in for each chunk).
    Counted in the worker, with sys.getallocatedblocks()."""
    n = 200_000
    with cpool.Pool(1) as p:
        base = p.apply(blocks_peak, (True,))
        if how == "range":
            got = p.map(note_blocks, range(n), chunksize=n)
        else:
            got = p.starmap(note_blocks, [(i, 0.5) for i in range(n)], chunksize=n)
        assert got == list(range(n))
        assert p.apply(blocks_peak, (False,)) - base < n // 10


@pytest.mark.parametrize("values", NUMBER_LISTS, ids=lambda v: repr(v[-3:]))
def test_only_lists_of_exact_numbers_go_flat(values):
    flat = all(type(x) is type(values[0]) and type(x) in (int, float) for x in values) \
        and len(values) >= 8 and all(-I64 <= x < I64 for x in values if type(x) is int)
    wire = _cpool._wire(values)
    assert (wire[0] == 1) is flat
    assert repr(_cpool._unwire(wire)) == repr(values)


@pytest.mark.parametrize("bad", [
    b"\x01q" + bytes(6) + (3).to_bytes(8, "little") + bytes(16),     # a count past the data
    b"\x01q" + bytes(6) + (1).to_bytes(8, "little") + bytes(16),     # data past the count
    b"\x01q" + bytes(6) + (2 ** 61).to_bytes(8, "little"),           # a count that wraps
    b"\x01z" + bytes(6) + (1).to_bytes(8, "little") + bytes(8),      # no such kind
])
def test_a_malformed_list_of_numbers_is_refused(bad):
    with pytest.raises(ValueError, match="malformed list of numbers"):
        _cpool._unwire(bad)


def args_of(*args):
    """What a starmap's function was called with, described from the inside."""
    return tuple((type(a).__name__, repr(a)) for a in args)


def fresh_rows(values):
    """Copies of tuples that only the returned list holds, as a worker's
    results are."""
    return [tuple(list(t)) for t in values]


ROWS = [
    [(i, 1) for i in range(20)],                                  # a starmap of pairs
    [(i,) for i in range(8)], [(i, 0.5 * i, -i, 2.5, I64 - 1) for i in range(9)],
    [(float("nan"), -0.0, float("inf"))] * 10, [(I64 - 1, -I64)] * 10,
    # not flat all through: the rows fall back to marshal or pickle, whole
    [(i, 1) for i in range(7)],                                   # too few
    [(i, 1, 2, 3, 4, 5) for i in range(10)],                      # too wide
    [(i, 1) for i in range(10)] + [(1, 2, 3)],                    # one of another width
    [(i, 1) for i in range(10)] + [(1.5, 2)],                     # another kind in a place
    [(i, 1) for i in range(10)] + [(I64, 2)],                     # past 64 bits
    [(i, True) for i in range(10)], [(i, MyInt(1)) for i in range(10)],
    [(i, None) for i in range(10)], [(i, "s") for i in range(10)],
    [(i, 1) for i in range(10)] + [[1, 2]],                       # a list, not a tuple
    [()] * 10,
]


@pytest.mark.parametrize("rows", ROWS, ids=lambda v: repr(v[-1]))
def test_a_starmap_of_rows_calls_with_the_same_arguments(pool, rows):
    """A starmap's tuples of numbers travel flat and the function is called
    on each row's values without a tuple: it gets the same arguments, of
    the same types, as from a pickle; rows that are not all such numbers,
    of one width and one kind per place, take the usual way."""
    want = [args_of(*t) for t in rows]
    for chunksize in (len(rows), 3):
        assert pool.starmap(args_of, rows, chunksize=chunksize) == want
    assert pool.starmap(args_of, rows, task_timeout=30) == want   # item by item


@pytest.mark.parametrize("rows", ROWS, ids=lambda v: repr(v[-1]))
def test_lists_of_rows_cross_unchanged(pool, rows):
    """A result (or an argument) that is a list of tuples of numbers, each
    held only by the list, travels flat too; its tuples come back equal and
    of the same types."""
    rows = fresh_rows(rows)
    flat = (len(rows) >= 8 and all(type(t) is tuple and len(t) == len(rows[0])
                                   for t in rows)
            and 1 <= len(rows[0]) <= 5
            and all(type(x) is type(rows[0][j]) and type(x) in (int, float)
                    and (type(x) is float or -I64 <= x < I64)
                    for t in rows for j, x in enumerate(t)))
    wire = _cpool._wire(rows)
    assert (wire[0] == 1) is flat
    assert repr(_cpool._unwire(wire)) == repr(rows)
    got = pool.apply(identity, (rows,))
    assert repr(got) == repr(rows)
    assert [type(x) for t in got for x in t] == [type(x) for t in rows for x in t]


def test_rows_in_a_segment(pool):
    """A chunk of rows too large for a ring record comes through its
    segment."""
    rows = [(i, 0.5) for i in range(300_000)]
    assert pool.starmap(float.__add__, [(float(i), 0.5) for i in range(10)]) \
        == [i + 0.5 for i in range(10)]
    assert pool.starmap(divmod, rows, chunksize=150_000) == [divmod(i, 0.5) for i, _ in rows]


def test_a_shared_tuple_stays_shared(pool):
    """A tuple that appears twice in a list is one object after the trip, as
    with pickle: such a list does not go flat."""
    t = (1, 2)
    rows = [t] * 10
    assert _cpool._wire(rows)[0] != 1
    got = pool.apply(identity, (rows,))
    assert got == rows and got[0] is got[9]


def test_a_raising_row_fails_the_starmap_and_the_pool_goes_on(pool):
    rows = [(i, 1) for i in range(40)]
    rows[17] = (0, 0)
    with pytest.raises(ZeroDivisionError):
        pool.starmap(divmod, rows, chunksize=10)
    assert pool.starmap(divmod, [(7, 2)] * 10) == [(3, 1)] * 10


@pytest.mark.parametrize("bad", [
    b"\x01t\x00" + bytes(5) + (1).to_bytes(8, "little") + bytes(8),     # no width
    b"\x01t\x06qqqqq" + (1).to_bytes(8, "little") + bytes(48),          # too wide
    b"\x01t\x02qz\x00\x00\x00" + (1).to_bytes(8, "little") + bytes(16),  # no such kind
    b"\x01t\x01qq\x00\x00\x00" + (1).to_bytes(8, "little") + bytes(8),   # a kind past the width
    b"\x01t\x02qq\x00\x00\x00" + (2).to_bytes(8, "little") + bytes(16),  # a count past the data
    b"\x01t\x02qq\x00\x00\x00" + (2 ** 60).to_bytes(8, "little"),        # a count that wraps
])
def test_malformed_rows_are_refused(bad):
    with pytest.raises(ValueError, match="malformed list of numbers"):
        _cpool._unwire(bad)


def test_a_nan_in_a_list_of_floats_keeps_its_bits(pool):
    import struct
    nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]   # a NaN with a payload
    got = pool.apply(identity, ([nan] * 10 + [0.25],))
    assert struct.pack("<d", got[0]) == struct.pack("<d", nan)


def test_nan_and_signed_zero(pool):
    got = pool.map(identity, [[float("nan"), -0.0]] * 4)
    assert all(math.isnan(a) and math.copysign(1, b) == -1 for a, b in got)


def test_sharing_within_a_chunk_survives(pool):
    inner = [1, 2]
    shared = [inner, inner]          # plain: marshal keeps the sharing
    ba = bytearray(b"x")
    shared_pickled = [ba, ba]        # not plain: pickle keeps it too
    assert pool.apply(shape, (shared,)) == ("list", True)
    assert pool.apply(shape, (shared_pickled,)) == ("bytearray", True)
    out = pool.apply(identity, (shared,))
    assert out[0] is out[1]
    chunk = pool.map(identity, [shared] * 4, chunksize=4)
    assert all(c[0] is c[1] for c in chunk)


def lists_shared(x):
    a, b = x
    return a is b, a[0] is b[0], a[0] == [1]


def test_sharing_of_mutable_containers_survives_in_any_shape(pool):
    # marshal without references (the fast path for chunks of plain tuples)
    # would copy a shared list twice: such payloads take the slower path.
    inner = [1]
    for shared in ([(inner,), (inner,)], [{"k": inner}, {"k": inner}]):
        got = pool.apply(identity, (shared,))
        first, second = got
        key = 0 if isinstance(first, tuple) else "k"
        assert first[key] is second[key]
        chunk = pool.map(identity, [shared] * 3, chunksize=3)
        assert all(c[0][key] is c[1][key] for c in chunk)
    t = ([1],)
    assert pool.apply(lists_shared, ([t, t],)) == (True, True, True)
    assert pool.map(lists_shared, [[t, t]] * 5, chunksize=5) == [(True, True, True)] * 5


def test_a_large_plain_chunk_and_result(pool):
    # over the inline limit: the chunk and the result go through segments
    items = [(i, str(i), i * 0.5, None) for i in range(50_000)]
    assert pool.map(identity, items, chunksize=25_000) == items
    assert pool.starmap(max, [(i, -i) for i in range(100_000)]) == \
        [i for i in range(100_000)]


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("size", [64 * 1024, 3 * 1024 * 1024 + 5])
def test_large_buffers_cross_out_of_band_unchanged(pool, kind, size):
    value = kind(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    got = pool.apply(identity, (value,))
    assert type(got) is kind and got == value
    got = pool.map(identity, [value, (1, value)], chunksize=1)
    assert type(got[0]) is kind and got[0] == value
    assert got[1] == (1, value) and type(got[1][1]) is kind


class Holder(bytearray):
    """A buffer, sent out of band like a NumPy array, that arrives as a Kept:
    an object living on the memory its buffer came in (not copied out)."""

    def __reduce_ex__(self, protocol):
        return Kept, (pickle.PickleBuffer(self),)


class Kept:
    def __init__(self, buf):
        self.view = memoryview(buf)


held = []


def hold(kept):
    held.append(kept)
    return len(held)


def held_sums():
    return [sum(k.view[::4096]) for k in held]


def make_holder(byte, size):
    return Holder(bytes([byte]) * size)


def test_an_object_living_on_received_memory_keeps_it():
    """Recycled segments are reused for the next large records, through
    mappings each side keeps.  An object that keeps a view of the memory it
    arrived in (not copied out) must keep its own copy of the bytes, writable
    as a private mapping is, however many records follow, in both directions;
    and no mapping the pool keeps may hold such a retired segment alive."""
    size = 3 << 20

    def retired(where):   # private mappings: an object lives on each
        if where == "parent":   # (which has other pools' mappings too)
            return [perms for perms, _ in segments_mapped() if perms.endswith("p")]
        perms = [perms for perms, _ in p.apply(segments_mapped)]
        assert len([m for m in perms if m.endswith("s")]) <= 8 + 4, \
            "kept (shared) mappings: at most one per recycled segment"
        return [m for m in perms if m.endswith("p")]

    with cpool.Pool(1) as p:
        for i in range(3):   # to the worker, which keeps each
            assert p.apply(hold, (Holder(bytes([i + 1]) * size),)) == i + 1
            # Each lives on its own retired segment (a private mapping); no
            # mapping the pool keeps (shared) holds a retired one alive.
            assert retired("worker") == ["rw-p"] * (i + 1)
            assert retired("parent") == []
            assert p.map(len, [bytes([i]) * size] * 20, 1) == [size] * 20
            assert p.map(identity, [bytes([i]) * size] * 4, 1) == [bytes([i]) * size] * 4
        assert p.apply(held_sums) == [(i + 1) * (size // 4096) for i in range(3)]
        back = []
        for i in range(3):   # to the parent, which keeps each
            back.append(p.apply(make_holder, (i + 7, size)))
            assert retired("parent") == ["rw-p"] * (i + 1)
            assert len(retired("worker")) == 3   # its own three, still
            assert p.map(identity, [bytes([i]) * size] * 20, 1) == [bytes([i]) * size] * 20
        for i, kept in enumerate(back):
            assert type(kept) is Kept and not kept.view.readonly
            assert kept.view.tobytes() == bytes([i + 7]) * size
            kept.view[0] = 0
        p.close()
        p.join()


def test_kept_mappings_are_not_inherited_and_go_with_the_pool():
    """The mappings kept for recycled segments are this process's own: a
    child forked meanwhile does not map them (it would keep their memory
    alive after the pool unlinks them), and the pool's end unmaps them."""
    import os
    others = {ino for _, ino in segments_mapped()}   # other pools' (this module's)
    with cpool.Pool(2) as p:
        data = [bytes([i]) * (1 << 20) for i in range(8)]
        assert p.map(identity, data, 1) == data
        mine = {ino for _, ino in segments_mapped()} - others
        assert mine, "the parent keeps mappings while the pool runs"
        assert segment_fds(), "the parent holds segments while the pool runs"
        pid = os.fork()
        if pid == 0:
            os._exit(1 if segments_mapped() or segment_fds() else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "a forked child inherited them"
        p.close()
        p.join()
    assert mine & {ino for _, ino in segments_mapped()} == set()


def test_another_pools_processes_hold_none_of_a_pools_segments():
    """A segment's memory lives while any process holds its descriptor: a
    pool started while another runs (its template, forked from here, and so
    its workers) must not keep the first pool's segments alive."""
    with cpool.Pool(1) as a:
        assert a.map(identity, [bytes(2 << 20)] * 4, 1) == [bytes(2 << 20)] * 4
        assert segment_fds(), "the parent holds the first pool's segments"
        with cpool.Pool(1) as b:
            assert b.apply(len, (b"x",)) == 1
            for pid in [b._core.template_pid] + [w.pid for w in b._pool]:
                assert segment_fds(pid) == {}, pid


def test_large_rebuilds_in_threads_and_in_a_forked_child():
    """A large out-of-band buffer is rebuilt in two halves at once, the
    second on a thread that lives for that copy only.  Threads that rebuild
    at the same time (two pools' collectors) each get their own bytes whole,
    and so does a forked child; no thread stays behind (it would make every
    later fork warn that the process is multi-threaded)."""
    import os
    from cpool import _cpool
    sources = [bytes(range(256)) * (12289 + 7 * i) + b"tail%d" % i for i in range(4)]
    bad = []
    before = len(os.listdir("/proc/self/task"))
    assert _cpool._rebuild(memoryview(sources[0]), bytes) == sources[0]
    # (<=: a thread of an earlier test's pool may be ending meanwhile)
    assert len(os.listdir("/proc/self/task")) <= before

    def rebuild_many(src):
        for _ in range(10):
            got = _cpool._rebuild(memoryview(src), bytes)
            if got != src:
                bad.append(len(src))
        arr = _cpool._rebuild(memoryview(src), bytearray)
        if type(arr) is not bytearray or arr != src:
            bad.append(("bytearray", len(src)))

    run_threads(rebuild_many, [(s,) for s in sources], T)
    assert bad == []
    pid = os.fork()
    if pid == 0:
        os._exit(0 if all(_cpool._rebuild(memoryview(s), bytes) == s for s in sources)
                 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_small_dev_shm_does_not_limit_large_records():
    """Records too large for a ring go through memfds, not /dev/shm: a full
    or tiny /dev/shm (a container's 64 MiB default) limits nothing, and
    nothing is made there.  Run in a mount namespace with a 2 MiB /dev/shm
    (root only, as CI runs)."""
    import os
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import os, sys, cpool
        def big(n):
            return b"r" * n
        with cpool.Pool(2) as pool:
            print("task", pool.apply(len, (b"a" * (4 << 20),)))
            print("result", len(pool.apply(big, (32 << 20,))))
            print("after", pool.apply(len, (b"a" * 1000,)), pool.map(abs, [-1, -2]))
        print("segments", os.listdir("/dev/shm"))
    """)
    # Not conftest.run_python: the interpreter runs under unshare and sh, in a
    # mount namespace of its own with a tiny /dev/shm.
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if os.geteuid() != 0 or probe.returncode != 0:
        pytest.skip("needs root and mount namespaces (unshare -m)")
    cmd = ["unshare", "-m", "sh", "-c",
           'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$0" -c "$1"',
           sys.executable, script]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=T)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:4] == [
        "task 4194304", "result 33554432", "after 1000 [1, 2]", "segments []"], \
        p.stdout + p.stderr


FD_SCENARIO = """
    import os, resource, sys, time, cpool
    def nap(b):
        time.sleep(0.002)
        return len(b)
    soft, hard = (int(x) for x in sys.argv[1:3])
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with cpool.Pool(2) as pool:
        # Each queued large task keeps its segment (a descriptor) open.
        rs = []
        try:
            for _ in range(1500):
                rs.append(pool.apply_async(nap, (os.urandom(100_000),)))
            print("sent", len(rs))
        except OSError as e:
            print("refused", e.errno == 24, "segment" in str(e))
        assert all(r.get(timeout=60) == 100_000 for r in rs)   # the ones sent: done
        print("after", pool.apply(nap, (b"x" * 200_000,)), pool.map(abs, [-1, -2]))
    print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_many_queued_large_tasks_raise_the_soft_descriptor_limit():
    """Segments are descriptors: 1,500 large tasks queued behind slow ones
    pass the usual soft limit of 1024, which the pool then raises to the hard
    limit (as systemd and Go do for programs that need more)."""
    from conftest import run_python
    out = run_python(FD_SCENARIO, args=("256", "4096")).stdout.split("\n")
    assert out[:3] == ["sent 1500", "after 200000 [1, 2]", "soft 4096"], out


def test_the_hard_descriptor_limit_is_a_clear_error_and_the_pool_goes_on():
    from conftest import run_python
    out = run_python(FD_SCENARIO, args=("256", "256")).stdout.split("\n")
    assert out[:3] == ["refused True True", "after 200000 [1, 2]", "soft 256"], out


class Heavy:
    """A function whose pickle is too large for a ring: its FUNC record goes
    through a segment of its own, once per worker and job."""
    def __init__(self, tag):
        self.tag = tag
        self.state = bytes([tag]) * 200_000

    def __call__(self, x):
        return (self.tag, x, len(self.state))


def test_large_functions_pipelined_job_after_job():
    """Short tasks pipeline several records per worker, so one job's FUNC
    record may wait in the ring behind another's: each segment stays open
    until its worker has loaded it, then is closed (none piles up)."""
    from procs import segment_fds
    with cpool.Pool(2) as p:
        p.map(abs, range(1000))             # measured short: pipelining on
        jobs = [(tag, p.map_async(Heavy(tag), range(12), 1)) for tag in range(1, 9)]
        for tag, r in jobs:
            assert r.get(timeout=T) == [(tag, x, 200_000) for x in range(12)]
        assert p.map(abs, range(-50, 0)) == list(range(50, 0, -1))
        assert len(segment_fds()) <= 8 + 8, "FUNC segments left open"   # 8 recycled per pool
        p.close()
        p.join()


def die():
    os._exit(3)


def test_large_tasks_queued_behind_a_dying_worker_reach_the_next_one():
    """A worker that dies leaves the messages carrying its queued records'
    segments on its slot's socket; its replacement skips (and closes) them
    and takes the ones sent again with the records."""
    big = [os.urandom(300_000) for _ in range(3)]
    with cpool.Pool(1) as p:
        p.map(abs, range(2000))      # measured short: records pipeline
        for _ in range(3):
            doomed = p.apply_async(die)
            rs = [p.apply_async(len, (b,)) for b in big]
            with pytest.raises(cpool.WorkerLostError):
                doomed.get(timeout=T)
            assert [r.get(timeout=T) for r in rs] == [300_000] * 3
        assert p.apply(identity, (big[0],)) == big[0]


def _segment_sizes(pid):
    return sorted(os.stat(f"/proc/{pid}/fd/{fd}").st_size for fd in segment_fds(pid))


def test_records_past_16_mib_reuse_their_segments_and_give_them_back():
    """Past the 16 MiB that recycled segments always hold, they still grow
    (within the pool's budget): a map of 40 MiB items reuses the segments
    instead of making (and faulting in) a new one per item, each way.  An
    entry that a much smaller record reuses gets a small file again."""
    size = 40 << 20
    with cpool.Pool(1) as p:
        items = [bytes([i]) * size for i in range(4)]
        assert p.map(identity, items, chunksize=1) == items
        [worker] = [w.pid for w in p._pool]
        big = [s for s in _segment_sizes(worker) if s >= size]
        assert big, "the worker kept no result segment past 40 MiB"
        assert [s for s in _segment_sizes("self") if s >= size], \
            "the parent kept no task segment past 40 MiB"
        held = sum(_segment_sizes(worker)) + sum(_segment_sizes("self"))
        small = [bytes([i]) * (1 << 20) for i in range(200)]
        assert p.map(identity, small, chunksize=1) == small
        assert sum(_segment_sizes(worker)) + sum(_segment_sizes("self")) < held
        assert p.apply(len, (items[0],)) == size   # and the pool goes on


def test_a_grown_segment_holds_only_the_pages_records_used():
    """A segment grown past 16 MiB gets an eighth more than its record, for
    the next, larger ones; nobody faults that headroom in before a record
    needs it (the reader's mapping used to populate the whole file: 8 MiB
    more held, and zeroed, for a 64 MiB record).  Checked after the first
    record (written with pwrite) and after later ones (through the writers'
    kept mappings)."""
    size = 64 << 20
    item = bytes(range(256)) * (size // 256)
    with cpool.Pool(1) as p:
        [worker] = [w.pid for w in p._pool]
        for _ in range(3):
            assert p.map(identity, [item]) == [item]
            held = {}
            for pid in (worker, "self"):
                for fd in segment_fds(pid):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if st.st_size > size:
                        held[st.st_ino] = (st.st_size, st.st_blocks * 512)
            assert len(held) == 2, held    # the task segment and the result segment
            for st_size, allocated in held.values():
                assert st_size >= size + size // 8
                assert allocated < size + (1 << 20), (st_size, allocated)
