"""imap and imap_unordered: order, next with a timeout, and their input
read lazily, a bounded window ahead of the consumer (an endless generator
works; an input that raises ends the iteration there)."""
import itertools
import multiprocessing
import time

import pytest

import cpool
from conftest import join_within
from tasks import T, square, sleep_then, sleepy_identity, fail_on_three


@pytest.mark.parametrize("chunksize", [1, 2, 5, 1000])
def test_imap_order(pool, chunksize):
    # early items are the slowest: imap still yields in input order
    data = [(0.02 * (10 - i) if i < 10 else 0, i) for i in range(40)]
    it = pool.imap(sleepy_identity, data, chunksize)
    got = [it.next(timeout=T) for _ in range(len(data))]
    assert got == [v for _, v in data]
    with pytest.raises(StopIteration):
        it.next(timeout=T)


@pytest.mark.parametrize("chunksize", [1, 3, 1000])
def test_imap_unordered_all_results(pool, chunksize):
    data = list(range(60))
    it = pool.imap_unordered(square, data, chunksize)
    got = [it.next(timeout=T) for _ in data]
    assert sorted(got) == sorted(map(square, data))
    with pytest.raises(StopIteration):
        next(it)


def test_imap_unordered_is_completion_order(pool):
    # item 0 is slow; with 4 workers the fast ones complete first
    data = [(1.0, "slow")] + [(0, i) for i in range(3)]
    it = pool.imap_unordered(sleepy_identity, data)
    first = it.next(timeout=T)
    rest = [it.next(timeout=T) for _ in range(3)]
    assert first != "slow"
    assert sorted(map(str, [first] + rest)) == sorted(str(v) for _, v in data)


def test_imap_for_loop_and_generator_input(pool):
    assert list(pool.imap(square, (i for i in range(100)), 7)) == \
        [square(i) for i in range(100)]
    assert list(pool.imap(square, [])) == []
    assert list(pool.imap_unordered(square, [])) == []


def test_imap_next_timeout(pool):
    it = pool.imap(sleep_then, [1.0])
    with pytest.raises(cpool.TimeoutError) as info:
        it.next(timeout=0.1)
    assert isinstance(info.value, multiprocessing.TimeoutError)
    assert it.next(timeout=T) is None
    with pytest.raises(StopIteration):
        it.next(timeout=T)
    it = pool.imap_unordered(sleep_then, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    assert it.next(timeout=T) is None


def test_imap_bad_chunksize(pool):
    with pytest.raises(ValueError):
        pool.imap(square, [1], 0)
    with pytest.raises(ValueError):
        pool.imap_unordered(square, [1], -1)


def test_imap_exception_in_task(pool):
    it = pool.imap(fail_on_three, range(6))
    got = []
    for _ in range(6):
        try:
            got.append(it.next(timeout=T))
        except KeyError as e:
            got.append(("KeyError", e.args))
    assert got == [fail_on_three(i) if i != 3 else ("KeyError", (3,))
                   for i in range(6)]


def test_imap_endless_generator(pool):
    it = pool.imap(square, itertools.count())
    got = [it.next(timeout=T) for _ in range(50)]
    assert got == [square(i) for i in range(50)]
    it2 = pool.imap_unordered(square, itertools.count(), 5)
    got2 = [it2.next(timeout=T) for _ in range(50)]
    assert len(set(got2)) == 50
    # terminate (the fixture's teardown) must not try to drain the input


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_imap_reads_input_lazily(pool):
    pulled = 0
    total = 100_000

    def source():
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield i

    it = pool.imap(square, source(), 1)
    got = [it.next(timeout=T) for _ in range(10)]
    assert got == [square(i) for i in range(10)]
    assert pulled < 10 + 100, f"imap read {pulled} of {total} items for 10 results"


def test_imap_input_raising(pool):
    def source():
        yield 1
        yield 2
        raise ZeroDivisionError("input broke")

    it = pool.imap(square, source())
    assert it.next(timeout=T) == square(1)
    assert it.next(timeout=T) == square(2)
    with pytest.raises(ZeroDivisionError):
        it.next(timeout=T)
    with pytest.raises(StopIteration):
        it.next(timeout=T)


def test_imap_close_join_drains_lazy_input(pool):
    it = pool.imap(square, (i for i in range(300)))
    pool.close()
    assert join_within(pool)
    assert list(it) == [square(i) for i in range(300)]


def test_imap_terminate_fails_pending(pool):
    it = pool.imap(sleep_then, [T] * 3)
    time.sleep(0.1)
    pool.terminate()
    with pytest.raises(cpool.PoolTerminatedError):
        it.next(timeout=5)
