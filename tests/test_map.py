"""map, map_async, starmap and starmap_async: chunk sizes, any iterable,
empty input, callbacks, a task's exception, get with a timeout."""
import multiprocessing

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
    (0, 2, 0, 0), (1, 2, 1, 1), (100, 2, 13, 13), (1000, 4, 63, 63),
    (8192, 2, 1024, 256), (10_000, 2, 1250, 313), (1_000_000, 2, 125_000, 31_250),
    (1_000_000, 64, 3907, 977), (5000, 64, 20, 20),
])
def test_default_chunksize(n, processes, mp_size, ours):
    """Without chunksize, a local pool cuts a long map into 16 chunks a
    worker (multiprocessing: 4), of 256 items at least (or multiprocessing's
    size, when smaller); with maxtasksperchild, and on a cluster, it is
    multiprocessing's."""
    from cpool.pool import _default_chunksize
    assert _default_chunksize(n, processes) == mp_size
    assert _default_chunksize(n, processes, fine=True) == ours


def test_the_chunks_a_map_runs_in():
    """A map of 100,000 items on 2 workers runs as 32 tasks; with
    maxtasksperchild, as multiprocessing's 8."""
    for kw, chunks in (({}, 32), ({"maxtasksperchild": 1000}, 8)):
        with cpool.Pool(2, **kw) as pool:
            before = pool.stats().done
            assert pool.map(square, range(100_000)) == [x * x for x in range(100_000)]
            assert pool.stats().done - before == chunks


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
