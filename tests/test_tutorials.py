"""Tutorial-style programs, run as standalone scripts in fresh interpreters.

Each script is written once with ``import MODULE as mp``; it is run with
MODULE = multiprocessing and with MODULE = cpool, and both runs must succeed
and print exactly the same thing.  Then: parallel speed-up on sleep-bound
work, and real overlap of CPU-bound tasks in different workers.
"""
import os
import time

import pytest

from conftest import run_python

T = 30

PRIME_MAP = """
import MODULE as mp

def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True

if __name__ == "__main__":
    numbers = list(range(2000, 2400))
    with mp.Pool(4) as pool:
        flags = pool.map(is_prime, numbers)
    primes = [n for n, f in zip(numbers, flags) if f]
    print(len(primes), "primes")
    print(primes)
    # chunked
    pool = mp.Pool(processes=2)
    print(sum(pool.map(is_prime, range(10_000), chunksize=250)))
    pool.close()
    pool.join()
"""

STARMAP = """
import MODULE as mp

def power(base, exp):
    return base ** exp

def greet(name, greeting="Hello"):
    return f"{greeting}, {name}!"

if __name__ == "__main__":
    pairs = [(b, e) for b in range(2, 6) for e in range(0, 5)]
    with mp.Pool(3) as pool:
        print(pool.starmap(power, pairs))
        print(pool.starmap(greet, [("Ada",), ("Linus", "Hi"), ("Guido", "Hey")]))
        print(pool.starmap_async(power, zip(range(10), [2] * 10)).get(timeout=30))
"""

APPLY_ASYNC = """
import MODULE as mp
import time

def slow_square(x):
    time.sleep(0.01)
    return x * x

def divide(a, b):
    return a / b

class InsufficientFunds(Exception):
    pass

def withdraw(balance, amount):
    if amount > balance:
        raise InsufficientFunds(f"cannot withdraw {amount} from {balance}")
    return balance - amount

if __name__ == "__main__":
    pool = mp.Pool(4)
    results = [pool.apply_async(slow_square, (i,)) for i in range(10)]
    print([r.get(timeout=30) for r in results])
    print(pool.apply(divide, (10, 4)))
    r = pool.apply_async(divide, (1, 0))
    try:
        r.get(timeout=30)
    except ZeroDivisionError as e:
        print("caught", type(e).__name__, e)
    print("successful:", r.successful())
    try:
        pool.apply(withdraw, (100, 250))
    except InsufficientFunds as e:
        print("caught", type(e).__name__, e.args)
    print(pool.apply(withdraw, (100, 25)))
    collected = []
    errors = []
    for i in range(5):
        pool.apply_async(divide, (i, i % 2), callback=collected.append,
                         error_callback=lambda e: errors.append(type(e).__name__))
    pool.close()
    pool.join()
    print(sorted(collected), errors)
    r = None
    try:
        pool.apply(divide, (1, 1))
    except ValueError as e:
        print("closed pool:", type(e).__name__)
"""

IMAP_STREAM = """
import MODULE as mp

def work(i):
    return i * i - 3 * i

if __name__ == "__main__":
    with mp.Pool(4) as pool:
        total = 0
        count = 0
        for value in pool.imap(work, range(1000), chunksize=10):
            total += value
            count += 1
        print(count, total)
        print(total == sum(work(i) for i in range(1000)))
        firsts = []
        for i, value in enumerate(pool.imap(work, range(1000), 10)):
            if i < 5:
                firsts.append(value)
        print(firsts)
        print(sorted(pool.imap_unordered(work, range(1000), chunksize=10))[-3:])
"""

WITH_BLOCKS = """
import MODULE as mp
import collections

TEXT = '''the quick brown fox jumps over the lazy dog the dog barks
and the fox runs away over the hill quick quick'''

def count_words(line):
    return collections.Counter(line.split())

def length(word):
    return len(word)

if __name__ == "__main__":
    lines = TEXT.splitlines() * 50
    with mp.Pool(4) as pool:
        counts = pool.map(count_words, lines)
    total = collections.Counter()
    for c in counts:
        total.update(c)
    print(total.most_common(5))
    with mp.Pool(processes=2) as pool:
        lengths = pool.map(length, sorted(total))
        print(list(zip(sorted(total), lengths)))
    with mp.Pool() as pool:
        print(pool.map(length, ["a", "bb", "ccc"]))
        r = pool.map_async(length, ["dddd"] * 3)
        print(r.get(timeout=30))
"""

PROCESS_QUEUE = """
import MODULE as mp

def producer(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)

def cube(x):
    return x ** 3

def worker(name, inq, outq):
    for item in iter(inq.get, None):
        outq.put((name, item * 2))
    outq.put((name, "done"))

if __name__ == "__main__":
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, 20))
    p.start()
    items = list(iter(q.get, None))
    p.join()
    print("producer exit code", p.exitcode)
    with mp.Pool(2) as pool:
        print(pool.map(cube, items))
    inq, outq = mp.Queue(), mp.Queue()
    procs = [mp.Process(target=worker, args=(f"w{i}", inq, outq)) for i in range(2)]
    for pr in procs:
        pr.start()
    pool = mp.Pool(2)
    for value in pool.imap(cube, range(10)):
        inq.put(value)
    for _ in procs:
        inq.put(None)
    results, done = [], 0
    while done < len(procs):
        name, value = outq.get(timeout=30)
        if value == "done":
            done += 1
        else:
            results.append(value)
    for pr in procs:
        pr.join()
    pool.close()
    pool.join()
    print(sorted(results))
    print([pr.exitcode for pr in procs])
    print(mp.cpu_count() == mp.cpu_count(), mp.current_process().name)
"""

CALLBACKS_INITIALIZER = """
import MODULE as mp

FACTOR = None

def init(factor):
    global FACTOR
    FACTOR = factor

def scale(x):
    return x * FACTOR

if __name__ == "__main__":
    results = []
    pool = mp.Pool(3, initializer=init, initargs=(7,))
    for i in range(10):
        pool.apply_async(scale, (i,), callback=results.append)
    pool.map_async(scale, range(3), callback=results.append)
    pool.close()
    pool.join()
    print(sorted(map(str, results)))
    with mp.Pool(2, maxtasksperchild=2) as pool:
        print(pool.map(abs, range(-5, 5), chunksize=1))
"""

TUTORIALS = {
    "prime_map": PRIME_MAP,
    "starmap": STARMAP,
    "apply_async": APPLY_ASYNC,
    "imap_stream": IMAP_STREAM,
    "with_blocks": WITH_BLOCKS,
    "process_queue": PROCESS_QUEUE,
    "callbacks_initializer": CALLBACKS_INITIALIZER,
}


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_same_output(name):
    script = TUTORIALS[name]
    assert script.count("import MODULE as mp") == 1
    mp_run = run_python(script.replace("MODULE", "multiprocessing"), timeout=60)
    assert mp_run.returncode == 0, mp_run.stderr
    cp_run = run_python(script.replace("MODULE", "cpool"), timeout=60)
    assert cp_run.returncode == 0, cp_run.stderr
    assert mp_run.stdout.strip()
    assert cp_run.stdout == mp_run.stdout
    assert cp_run.stderr == mp_run.stderr == ""


def test_tutorial_runs_from_any_cwd(tmp_path):
    res = run_python("""
        import cpool as mp
        def double(x):
            return 2 * x
        if __name__ == "__main__":
            with mp.Pool(2) as pool:
                print(pool.map(double, range(5)))
        """, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str([2 * x for x in range(5)])


# -- speed ------------------------------------------------------------------------

def nap(t):
    time.sleep(t)
    return t


def test_parallel_beats_sequential_on_sleep(pool):
    durations = [0.25] * 8
    assert pool.map(nap, [0.0] * 4) == [0.0] * 4   # workers warm
    t0 = time.monotonic()
    assert pool.map(nap, durations, chunksize=1) == durations
    wall = time.monotonic() - t0
    assert wall < 0.6 * sum(durations), f"{wall:.2f} s for {sum(durations)} s of sleep"


def spin(n):
    """A fixed amount of CPU work: (pid, start, end)."""
    start = time.monotonic()
    x = 0
    for i in range(n):
        x += i * i
    end = time.monotonic()
    return os.getpid(), start, end


def calibrate(seconds):
    n = 100_000
    while True:
        _, start, end = spin(n)
        if end - start > 0.05:
            return max(1, int(n * seconds / (end - start)))
        n *= 2


@pytest.mark.parametrize("pool", [{"processes": 2}], indirect=True)
def test_cpu_bound_tasks_overlap_in_different_workers(pool):
    n = calibrate(0.3)
    spans = pool.map(spin, [n] * 4, chunksize=1)
    overlapping = [
        (a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert len({pid for pid, _, _ in spans}) >= 2, spans
    assert overlapping, f"no two workers ran at the same time: {spans}"
