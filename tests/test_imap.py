"""imap and imap_unordered: order, next with a timeout, and their input
read lazily, ahead of the consumer as far as buffersize says, or as keeps
the workers busy within a bound on the results held (an endless generator
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
    # Ahead of the consumer: the chunks in flight, and what was read as
    # results arrived while it waited (bounded by the results held); a few
    # hundred here.  multiprocessing reads all of it first.
    assert pulled < 2000, f"imap read {pulled} of {total} items for 10 results"


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


# -- how far ahead the input is read (issue 13) --

def _counting(values):
    """(generator over values, a list whose length is how many it gave)."""
    pulled = []

    def gen():
        for v in values:
            pulled.append(v)
            yield v
    return gen(), pulled


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
@pytest.mark.parametrize("buffersize", [1, 3, 16])
@pytest.mark.parametrize("ordered", [True, False])
def test_imap_buffersize_bounds_what_is_submitted_and_not_taken(pool, buffersize, ordered):
    """buffersize, as CPython 3.15 defines it: at most that many tasks
    submitted whose results the consumer has not taken."""
    src, pulled = _counting(range(200))
    imap = pool.imap if ordered else pool.imap_unordered
    it = imap(square, src, buffersize=buffersize)
    got = []
    for _ in range(200):
        got.append(it.next(timeout=T))
        time.sleep(0.0005)        # the workers get ahead if they may
        assert len(pulled) - len(got) <= buffersize
    assert sorted(got) == [square(i) for i in range(200)]
    assert not ordered or got == [square(i) for i in range(200)]


def test_imap_buffersize_is_checked(pool):
    with pytest.raises(TypeError):
        pool.imap(square, range(3), buffersize=1.5)
    with pytest.raises(ValueError):
        pool.imap_unordered(square, range(3), buffersize=0)
    assert list(pool.imap(square, range(3), buffersize=1)) == [0, 1, 4]


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_a_slow_item_does_not_leave_the_workers_idle(pool, monkeypatch):
    """While the consumer waits for a slow first item, the input goes on
    being read (the workers stay busy) up to the bound on results held, and
    no further: an endless input stays in bounded memory."""
    import cpool.imap as imap_mod
    monkeypatch.setattr(imap_mod, "IMAP_HOLD_ITEMS", 300)
    src, pulled = _counting(itertools.chain([(1.5, "slow")], ((0, i) for i in itertools.count())))
    it = pool.imap(sleepy_identity, src)
    assert it.next(timeout=T) == "slow"
    window = 2 * imap_mod.IMAP_WINDOW_PER_WORKER
    # a window of 8 would have read 8: it read on as results arrived...
    assert len(pulled) > 300 - window, len(pulled)
    # ...and stopped at the bound (what is held, plus what is in flight)
    assert len(pulled) <= 300 + window + 1, len(pulled)


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_imap_unordered_hands_out_the_rest_while_one_is_slow(pool):
    it = pool.imap_unordered(sleepy_identity,
                             itertools.chain([(1.5, "slow")], ((0, i) for i in range(1000))))
    before = 0
    while it.next(timeout=T) != "slow":
        before += 1
    assert before == 1000     # every fast one came while the slow one ran
    with pytest.raises(StopIteration):
        it.next(timeout=T)


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_imap_bounds_the_bytes_it_holds(pool, monkeypatch):
    import cpool.imap as imap_mod
    monkeypatch.setattr(imap_mod, "IMAP_HOLD_BYTES", 1 << 20)
    big = b"x" * (100 << 10)
    src, pulled = _counting(itertools.chain([(1.5, big)], ((0, big) for _ in itertools.count())))
    it = pool.imap(sleepy_identity, src)
    assert it.next(timeout=T) == big
    window = 2 * imap_mod.IMAP_WINDOW_PER_WORKER
    # 1 MiB of 100 KiB results is 11 held, plus what was in flight
    assert 11 <= len(pulled) <= 11 + window + 1, len(pulled)
