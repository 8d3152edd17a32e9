"""map, map_async, starmap and starmap_async: chunk sizes, any iterable,
empty input, callbacks, a task's exception, get with a timeout."""
import multiprocessing
import operator

import pytest

import cpool
from tasks import T, square, add3, identity, sleep_then, raise_value_error, fail_on_three


@pytest.mark.parametrize("chunksize", [None, 1, 2, 3, 7, 100, 10_000])
def test_map_chunksizes(pool, chunksize):
    data = list(range(257))
    assert pool.map(square, data, chunksize) == list(map(square, data))
    assert pool.map(square, data, chunksize=chunksize) == list(map(square, data))


def test_map_generator_and_other_iterables(pool):
    assert pool.map(square, (i for i in range(50))) == [square(i) for i in range(50)]
    assert pool.map(square, range(30)) == [square(i) for i in range(30)]
    assert pool.map(identity, "hello") == list("hello")
    assert pool.map(identity, {1: "a", 2: "b"}) == [1, 2]


def test_map_empty(pool):
    assert pool.map(square, []) == []
    assert pool.map(square, iter([])) == []
    got = []
    r = pool.map_async(square, [], callback=got.append)
    assert r.ready()
    assert r.get(timeout=T) == []
    assert pool.starmap(add3, []) == []
    # multiprocessing does not call the callback for an empty map either
    mp_got = []
    with multiprocessing.get_context("fork").Pool(1) as mpp:
        mpp.map_async(square, [], callback=mp_got.append).get(timeout=T)
    assert got == mp_got


def test_map_async_callback(pool):
    got = []
    r = pool.map_async(square, range(40), 3, callback=got.append)
    assert r.get(timeout=T) == [square(i) for i in range(40)]
    assert got == [[square(i) for i in range(40)]]
    assert r.successful()


def test_map_async_error_callback(pool):
    ok, errs = [], []
    r = pool.map_async(fail_on_three, range(10), 2, callback=ok.append,
                       error_callback=errs.append)
    with pytest.raises(KeyError) as info:
        r.get(timeout=T)
    assert info.value.args == (3,)
    assert ok == [] and len(errs) == 1 and errs[0] is info.value
    assert not r.successful()
    # the pool is fine afterwards
    assert pool.map(fail_on_three, [1, 2]) == [fail_on_three(1), fail_on_three(2)]


def test_map_raises_task_exception(pool):
    with pytest.raises(KeyError) as info:
        pool.map(fail_on_three, range(10))
    assert info.value.args == (3,)


def test_starmap(pool):
    data = [(1, 2), (3, 4, 5), (6,), (7, 8)]
    assert pool.starmap(add3, data) == [add3(*t) for t in data]
    assert pool.starmap(add3, data, chunksize=1) == [add3(*t) for t in data]
    assert pool.starmap(add3, iter(data), 3) == [add3(*t) for t in data]


def test_starmap_async(pool):
    got = []
    data = [(i, i + 1, i + 2) for i in range(25)]
    r = pool.starmap_async(add3, data, 4, callback=got.append)
    assert r.get(timeout=T) == [add3(*t) for t in data]
    assert got == [[add3(*t) for t in data]]
    errs = []
    r = pool.starmap_async(raise_value_error, [(1,), (2,)],
                           error_callback=errs.append)
    with pytest.raises(ValueError):
        r.get(timeout=T)
    assert len(errs) == 1 and isinstance(errs[0], ValueError)


def test_map_async_get_timeout(pool):
    r = pool.map_async(sleep_then, [0.8, 0.8])
    with pytest.raises(cpool.TimeoutError):
        r.get(timeout=0.05)
    assert r.get(timeout=T) == [None, None]


@pytest.mark.parametrize("n, processes, mp_size, ours", [
    (0, 2, 0, (0, None)), (1, 2, 1, (1, 1)), (100, 2, 13, (13, 8)),
    (1000, 4, 63, (63, 16)), (8192, 2, 1024, (256, 32)), (10_000, 2, 1250, (313, 32)),
    (1_000_000, 2, 125_000, (31_250, 32)), (1_000_000, 64, 3907, (977, 1024)),
    (5000, 64, 20, (20, 256)), (3, 4, 1, (1, 3)),
    # a 256-item floor would leave a short last chunk: 16 chunks of 250
    (4000, 2, 500, (250, 16)),
    # 391 chunks of 256 would leave 57 of 64 workers idle for the last ones
    (100_000, 64, 391, (224, 448)),
    # 25 chunks of 4 would run in 4 rounds of 8 workers, the last of one chunk
    (100, 8, 4, (4, 32)),
])
def test_default_chunks(n, processes, mp_size, ours):
    """Without chunksize, a local pool cuts a long map into about 16 chunks
    a worker (multiprocessing: 4), of 256 items at least (or
    multiprocessing's size, when smaller), as many as a multiple of the
    workers, of sizes within one item of each other; with
    maxtasksperchild, and on a cluster, it is multiprocessing's."""
    from cpool.pool import _default_chunks
    assert _default_chunks(n, processes) == (mp_size, None)
    assert _default_chunks(n, processes, fine=True) == ours


def test_a_map_cut_into_uneven_chunks_places_every_item():
    """A map cut into chunks of sizes one item apart (100 items on 2
    workers: 4 chunks of 13, then 4 of 12) puts every result in its place,
    and progress= counts each chunk's own items, also a failing one's."""
    from cpool.pool import _default_chunks
    with cpool.Pool(2) as pool:
        for n in (100, 4000, 4001, 7):
            chunks = _default_chunks(n, 2, fine=True)[1]
            before = pool.stats().done
            assert pool.map(square, range(n)) == [x * x for x in range(n)]
            assert pool.starmap(pow, [(x, 2) for x in range(n)]) == [x * x for x in range(n)]
            assert pool.stats().done - before == 2 * chunks
    # One worker runs 101 items as chunks of 26, 25, 25, 25, in order; the
    # last one fails (1 / 0 at item 100), and still counts its 25 items.
    assert _default_chunks(101, 1, fine=True) == (26, 4)
    with cpool.Pool(1) as pool:
        seen = []
        with pytest.raises(ZeroDivisionError):
            pool.starmap(operator.truediv, [(1, 100 - x) for x in range(101)],
                         progress=lambda done, total: seen.append(done))
        assert seen == [26, 51, 76, 101], seen
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_the_chunks_a_map_runs_in():
    """A map of 100,000 items on 2 workers runs as 32 tasks; with
    maxtasksperchild, as multiprocessing's 8."""
    for kw, chunks in (({}, 32), ({"maxtasksperchild": 1000}, 8)):
        with cpool.Pool(2, **kw) as pool:
            before = pool.stats().done
            assert pool.map(square, range(100_000)) == [x * x for x in range(100_000)]
            assert pool.stats().done - before == chunks


def test_submit_chunks_refuses_a_cut_it_cannot_make(pool):
    """nchunks (the core's even cut, which MapResult must match) more than
    the items, or for a part of a map (first_idx not 0): a ValueError, and
    nothing queued."""
    core, blob = pool._core, pool._func_blob(square)
    before = pool.stats().done
    for items, first, nchunks in (([1, 2], 0, 3), ([1, 2, 3], 1, 2)):
        with pytest.raises(ValueError):
            core.submit_chunks(1 << 40, blob, items, 2, False, first, True, 0, 0, nchunks)
    from cpool.pool import _default_chunks
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert pool.stats().done - before == _default_chunks(10, pool._processes, True)[1]


def test_a_chunk_moves_into_the_map_list_once():
    """MapResult._set moves a chunk's items (_cpool._place): no copy, and a
    repeated delivery (after a Ctrl-C in _set) changes nothing."""
    from cpool._cpool import _place
    items = [object(), object(), object()]
    dst, src = [None] * 5, list(items)
    _place(dst, 1, src)
    assert src == [] and dst[1:4] == items and all(a is b for a, b in zip(dst[1:4], items))
    assert dst[0] is None and dst[4] is None
    _place(dst, 1, src)   # the repeat: an emptied chunk
    assert dst[1:4] == items and len(dst) == 5
    # A slot already filled, a tuple, a short last chunk: a slice assignment.
    dst, src = [None, 0, None], [7, 8]
    _place(dst, 1, src)
    assert dst == [None, 7, 8] and src == [7, 8]
    dst = [None] * 3
    _place(dst, 1, (5, 6))
    assert dst == [None, 5, 6]
    with pytest.raises(TypeError):
        _place(dst, 0, None)
    same = [None, None]   # a list into itself: what the slice assignment does
    _place(same, 0, same)
    assert same == [None, None]
