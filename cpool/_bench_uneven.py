"""The benchmark's uneven work (cpool.bench): tasks of uneven lengths, and
how close a pool gets to the ideal time for them."""
import statistics
import time


def nap(seconds):
    time.sleep(seconds)
    return seconds


# -- uneven work: how close to the ideal a pool gets ---------------------------

UNEVEN = ("uneven_imap", "uneven_imap_unordered", "uneven_map", "uneven_apply_async",
          "uneven_growing", "uneven_shrinking", "long_then_map")


def uneven_mix(n):
    """n task lengths: mostly 1 ms, 4% 50 ms, 1% 200 ms, in a fixed order."""
    out = []
    for i in range(n):
        x = (i * 7919) % 100       # a fixed, scattered pattern
        out.append(0.2 if x == 37 else 0.05 if x in (5, 23, 61, 88) else 0.001)
    return out


def ideal_seconds(lengths, workers, overshoot):
    """The time a pool with no overhead needs: each task, in input order,
    starts on the first worker free (greedy list scheduling, what a FIFO
    pool can reach), each lasting its length plus this machine's sleep
    overshoot (measured in the same run)."""
    import heapq
    free = [0.0] * workers
    for t in lengths:
        heapq.heappush(free, heapq.heappop(free) + t + overshoot)
    return max(free)


_overshoot = None


def sleep_overshoot():
    """How much longer than asked time.sleep(1 ms) lasts here (median)."""
    global _overshoot
    if _overshoot is None:
        xs = []
        for _ in range(50):
            t0 = time.perf_counter()
            time.sleep(0.001)
            xs.append(time.perf_counter() - t0 - 0.001)
        _overshoot = statistics.median(xs)
    return _overshoot


def run_uneven(k, pool, n, processes):
    """(seconds, 100 x the ideal seconds): run() divides the second by the
    first, so the row reads how close to the ideal the run came, in percent
    (100: no time lost to scheduling or overhead)."""
    if k == "long_then_map":
        # A long task, then a map of short ones: the map must not wait
        # behind it; the ideal is the long task alone.
        long_s = n / 1000
        short = [0.001] * 200
        pool.map(abs, range(10_000), 10)   # the pool has seen short tasks
        t0 = time.perf_counter()
        r = pool.apply_async(nap, (long_s,))
        got = pool.map(nap, short)
        r.get()
        dt = time.perf_counter() - t0
        if got != short:
            raise AssertionError("long_then_map: wrong result")
        return dt, 100 * max(long_s, ideal_seconds(short, processes - 1 or 1,
                                                   sleep_overshoot()))
    if k == "uneven_growing":
        lengths = [0.010 * i / n for i in range(n)]
    elif k == "uneven_shrinking":
        lengths = [0.010 * (n - i) / n for i in range(n)]
    else:
        lengths = uneven_mix(n)
    want = lengths
    t0 = time.perf_counter()
    if k == "uneven_imap":
        got = list(pool.imap(nap, lengths, 1))
    elif k == "uneven_imap_unordered":
        got, want = sorted(pool.imap_unordered(nap, lengths, 1)), sorted(lengths)
    elif k == "uneven_apply_async":
        got = [a.get() for a in [pool.apply_async(nap, (t,)) for t in lengths]]
    else:
        got = pool.map(nap, lengths, 1)
    dt = time.perf_counter() - t0
    if got != want:
        raise AssertionError(f"{k}: wrong result")
    return dt, 100 * ideal_seconds(lengths, processes, sleep_overshoot())


