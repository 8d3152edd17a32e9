"""One pool, many threads: submitters side by side, and waiters that each
collect results themselves while they wait (get, next, map)."""
import time

import pytest

import cpool
from conftest import run_threads
from tasks import T, square, add3


def test_concurrent_submitters(pool):
    errors = []
    results = {}

    def submit(k):
        try:
            data = list(range(k * 1000, k * 1000 + 300))
            results[k] = (pool.map(square, data, 7) == list(map(square, data)),
                          [pool.apply_async(add3, (k, i)).get(timeout=T)
                           for i in range(20)] == [add3(k, i) for i in range(20)])
        except BaseException as e:
            errors.append(e)

    run_threads(submit, [(k,) for k in range(4)], T)
    assert errors == []
    assert results == {k: (True, True) for k in range(4)}


def test_many_threads_waiting_at_once(pool):
    """Waiters race for the collection token: each gets its own results,
    whoever collected them."""
    out, errors = {}, []

    def run(k):
        try:
            got = [pool.apply(square, (k * 1000 + i,)) for i in range(200)]
            got += list(pool.imap(square, range(k, k + 300)))
            got.append(pool.map_async(square, range(50)).get(timeout=T))
            out[k] = got
        except BaseException as e:
            errors.append(e)

    run_threads(run, [(k,) for k in range(6)], T)
    assert errors == []
    for k, got in out.items():
        assert got[:200] == [(k * 1000 + i) ** 2 for i in range(200)]
        assert got[200:500] == [i * i for i in range(k, k + 300)]
        assert got[500] == [i * i for i in range(50)]
    assert len(out) == 6


def test_get_timeout_while_collecting(pool):
    r = pool.apply_async(time.sleep, (1.0,))
    t0 = time.monotonic()
    with pytest.raises(cpool.TimeoutError):
        r.get(timeout=0.2)
    assert time.monotonic() - t0 < 0.9
    assert r.get(timeout=T) is None
