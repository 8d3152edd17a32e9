"""A small cpool workload for valgrind's memcheck (scripts/ci_valgrind.sh).

Every C path of the hot calls once or a few times, with little data: a Pool's
map, starmap, apply, apply_async (with a callback), imap, imap_unordered, a
task that raises, a result over the ring's large-record threshold (a shared
segment each way), close/join and terminate/join; a Value and an Array read
and written under their locks and passed to tasks; Lock and RLock acquired
and released, with and without timeouts.  valgrind makes it ~50x slower, so
it stays small: it runs in a couple of seconds without valgrind.
"""
import cpool


def square(x):
    return x * x


def add(x, y):
    return x + y


def boom(x):
    raise ValueError(f"boom {x}")


def bump(counter, n):
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1
    return counter.value


def echo(b):
    return b


def main():
    got = []
    with cpool.Pool(2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, range(20), chunksize=3) == [x * x for x in range(20)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(square, (7,)) == 49
        r = pool.apply_async(square, (8,), callback=got.append)
        assert r.get(timeout=60) == 64
        assert list(pool.imap(square, range(10))) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10), chunksize=2)) == \
            [x * x for x in range(10)]
        try:
            pool.apply(boom, (1,))
        except ValueError as e:
            assert "boom 1" in str(e)
        else:
            raise AssertionError("no error")
        big = b"v" * (1 << 20)                      # a segment each way
        assert pool.apply(echo, (big,)) == big
        big = bytes(range(256)) * (12 << 10) + b"!"  # rebuilt in two halves, twice:
        assert pool.map(echo, [big, big], 1) == [big, big]   # kept mappings reused
        counter = cpool.Value("i", 0)
        assert sum(pool.starmap(bump, [(counter, 5)] * 2)) >= 10
        assert counter.value == 10
        pool.close()
        pool.join()
    assert got == [64]

    pool = cpool.Pool(1)
    pool.map_async(square, range(5)).get(timeout=60)
    pool.terminate()
    pool.join()

    v = cpool.Value("d", 1.5)
    v.value += 1
    assert v.value == 2.5
    arr = cpool.Array("i", range(5))
    arr[0] = 10
    assert arr[:] == [10, 1, 2, 3, 4]
    for lock in (cpool.Lock(), cpool.RLock()):
        assert lock.acquire()
        lock.release()
        assert lock.acquire(timeout=0.1)
        lock.release()
        with lock:
            pass
    print("valgrind smoke: ok")


if __name__ == "__main__":
    main()
