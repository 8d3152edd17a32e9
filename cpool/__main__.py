"""python -m cpool: a CPU-bound job on every core, with cpool and with
multiprocessing.Pool side by side, and both times.

    python -m cpool [--n N] [--processes P]

python -m cpool run: a program run unmodified, its pools cpool's.

    python -m cpool run script.py [args...]
    python -m cpool run -m module [args...]
"""
import argparse
import multiprocessing
import os
import sys
import time

import cpool


def is_prime(n):
    """Trial division: deliberately plain Python, so the work is CPU-bound."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def run(pool_cls, numbers, processes):
    t0 = time.perf_counter()
    with pool_cls(processes) as pool:
        flags = pool.map(is_prime, numbers)
    return time.perf_counter() - t0, sum(flags)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if list(argv[:1]) == ["run"]:
        from cpool import _runner
        return _runner.run(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m cpool", description=__doc__.split("\n\n")[0],
                                 epilog="python -m cpool run script.py|-m module [args...]: "
                                        "run a program with its pools replaced by cpool's")
    ap.add_argument("--n", type=int, default=6000,
                    help="how many large odd numbers to test for primality")
    ap.add_argument("--processes", type=int, default=None,
                    help="workers (default: every CPU this process may use)")
    args = ap.parse_args(argv)
    processes = args.processes or cpool.pool._default_processes()
    start = 10**10 + 1
    numbers = list(range(start, start + 2 * args.n, 2))

    print(f"cpool {cpool.__version__}: is_prime over {len(numbers):,} numbers near 1e10, "
          f"{processes} worker processes, Python {sys.version.split()[0]}")
    t_mp, primes_mp = run(multiprocessing.get_context("fork").Pool, numbers, processes)
    t_cp, primes_cp = run(cpool.Pool, numbers, processes)
    if primes_mp != primes_cp:
        print(f"MISMATCH: multiprocessing found {primes_mp} primes, cpool {primes_cp}")
        return 1
    print(f"  multiprocessing.Pool  {t_mp:7.3f} s   ({primes_mp} primes)")
    print(f"  cpool.Pool            {t_cp:7.3f} s   ({primes_cp} primes)")
    print(f"  ratio (multiprocessing time / cpool time): {t_mp / t_cp:.2f}x")
    return 0


if __name__ == "__main__":
    if os.name != "posix":
        sys.exit("cpool runs on Linux")
    sys.exit(main())
