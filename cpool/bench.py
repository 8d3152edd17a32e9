"""python -m cpool.bench: cpool against multiprocessing.Pool, side by side.

Each workload runs on multiprocessing.Pool and on cpool.Pool (and on the
peers named with --against, when installed) in this one process, one after
the other, with the same worker count; every result is checked against an
in-process reference; the table gives throughputs and the ratio
cpool / multiprocessing (higher is better for cpool).  The floor of this
machine, measured in the same run, says how far each figure is from the
limit: a futex round trip between two processes (and the same hand-off
when both sides spin), and memcpy bandwidth.

    python -m cpool.bench [--quick] [--repeat N] [--processes P]
                          [--json] [--plot FILE.png]
                          [--against concurrent.futures,loky,mpire]

--scaling runs, instead of the table, how cost grows: items/s as n grows,
MB/s as the item size grows, throughput as workers grow, each beside the
in-process serial figure (cpool/_bench_scaling.py); --plot then draws its
three panels.  Opt-in: a few minutes at full size.
"""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

import cpool
from cpool import _cpool
from cpool._bench_uneven import UNEVEN, run_uneven

MiB = 1 << 20


# -- the functions the workers run (module level: picklable by reference) --

def identity(x):
    return x


def add(a, b):
    return a + b


def nbytes(b):
    return len(b)


def make_bytes(n):
    return b"\x5a" * n


_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n):
    """Deterministic Miller-Rabin for n < 3.3e24: CPU-bound big-int work."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


_counter = None


def _set_counter(v):
    global _counter
    _counter = v


def bump(k):
    v = _counter
    for _ in range(k):
        with v.get_lock():
            v.value += 1
    return k


# -- pools under test: one interface over each library ---------------------

# The executor rows: concurrent.futures.ProcessPoolExecutor (in the
# multiprocessing column) against cpool.ProcessPoolExecutor.
EXECUTOR_KEYS = ("executor_submit", "executor_pipelined", "executor_map")


class Subject:
    name = "?"
    has = frozenset()   # workloads it can run; others print "n/a"

    def __init__(self, processes):
        self.processes = processes

    def pool(self, **kw):
        raise NotImplementedError

    def executor(self):
        raise NotImplementedError


class PoolSubject(Subject):
    """multiprocessing.Pool and cpool.Pool: the whole API."""

    has = frozenset(["map", "starmap", "imap", "imap_unordered", "apply_async", "apply",
                     "to_workers", "echo", "big_result", "cpu", "startup", "value", *UNEVEN,
                     *EXECUTOR_KEYS])

    def __init__(self, name, factory, value, processes, executor=None):
        super().__init__(processes)
        self.name, self._factory, self.Value = name, factory, value
        self._executor = executor

    def pool(self, **kw):
        return self._factory(self.processes, **kw)

    def executor(self):
        return self._executor(self.processes)


class FuturesSubject(Subject):
    """concurrent.futures-style executors (concurrent.futures, loky)."""

    has = frozenset(["map", "starmap", "imap", "apply_async", "apply", "to_workers",
                     "echo", "big_result", "cpu", "startup", *EXECUTOR_KEYS])

    def __init__(self, name, make_executor, processes):
        super().__init__(processes)
        self.name, self._make = name, make_executor

    def pool(self, **kw):
        return _ExecutorAsPool(self._make(self.processes))

    def executor(self):
        return self._make(self.processes)


class _ExecutorAsPool:
    def __init__(self, ex):
        self.ex = ex

    def map(self, f, it, chunksize=None):
        return list(self.ex.map(f, it, chunksize=chunksize or 1))

    def starmap(self, f, pairs, chunksize=None):
        return list(self.ex.map(f, *zip(*pairs), chunksize=chunksize or 1))

    def imap(self, f, it, chunksize=1):
        return self.ex.map(f, it, chunksize=chunksize)

    def apply_async(self, f, args=()):
        fut = self.ex.submit(f, *args)
        fut.get = fut.result
        return fut

    def apply(self, f, args=()):
        return self.ex.submit(f, *args).result()

    def terminate(self):
        self.ex.shutdown(wait=True, cancel_futures=True)

    def join(self):
        pass


class MpireSubject(Subject):
    has = frozenset(["map", "starmap", "imap", "imap_unordered", "apply_async", "apply",
                     "to_workers", "echo", "big_result", "cpu", "startup"])

    def __init__(self, processes):
        super().__init__(processes)
        self.name = "mpire"

    def pool(self, **kw):
        import mpire
        return _MpireAsPool(mpire.WorkerPool(self.processes, start_method="fork"))


class _MpireAsPool:
    def __init__(self, wp):
        self.wp = wp

    def map(self, f, it, chunksize=None):
        return self.wp.map(f, it, chunk_size=chunksize, progress_bar=False)

    def starmap(self, f, pairs, chunksize=None):
        return self.wp.map(f, pairs, chunk_size=chunksize, progress_bar=False)

    def imap(self, f, it, chunksize=1):
        return self.wp.imap(f, it, chunk_size=chunksize, progress_bar=False)

    def imap_unordered(self, f, it, chunksize=1):
        return self.wp.imap_unordered(f, it, chunk_size=chunksize, progress_bar=False)

    def apply_async(self, f, args=()):
        return self.wp.apply_async(f, args)

    def apply(self, f, args=()):
        return self.wp.apply(f, args)

    def terminate(self):
        self.wp.terminate()

    def join(self):
        pass


def subjects(processes, against):
    mpctx = multiprocessing.get_context("fork")

    def stdlib_executor(n):
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(n, mp_context=mpctx)

    out = [PoolSubject("multiprocessing", mpctx.Pool, mpctx.Value, processes,
                       stdlib_executor),
           PoolSubject("cpool", cpool.Pool, cpool.Value, processes,
                       cpool.ProcessPoolExecutor)]
    for name in against:
        try:
            if name == "concurrent.futures":
                from concurrent.futures import ProcessPoolExecutor
                out.append(FuturesSubject(name, lambda n: ProcessPoolExecutor(
                    n, mp_context=mpctx), processes))
            elif name == "loky":
                import loky
                out.append(FuturesSubject(name, lambda n: loky.get_reusable_executor(
                    n, reuse=False), processes))
            elif name == "mpire":
                import mpire  # noqa: F401
                out.append(MpireSubject(processes))
            else:
                print(f"--against: unknown peer {name!r}", file=sys.stderr)
        except ImportError:
            print(f"--against: {name} is not installed; skipped", file=sys.stderr)
    return out


# -- workloads ----------------------------------------------------------------

class Workload:
    def __init__(self, key, title, unit, size, quick, fresh_pool=False):
        self.key, self.title, self.unit = key, title, unit
        self.size, self.quick, self.fresh_pool = size, quick, fresh_pool

    def n(self, quick):
        return self.quick if quick else self.size


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run_workload(w, subject, n, processes):
    """(seconds, items) of one run; raises if the result is wrong."""
    k = w.key
    if k == "startup" and not _IN_STARTUP_CHILD:
        return _startup_in_child(subject, n, processes)
    if k == "startup":
        # n pools, one after the other: the time from each Pool() call to its
        # first result (a single pool's few milliseconds would be noise).
        dt = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            pool = subject.pool()
            try:
                assert pool.apply(identity, (7,)) == 7
                dt += time.perf_counter() - t0
            finally:
                pool.terminate()
                pool.join()
                del pool  # freed here: not inside the next start's time
        return dt, n
    if k in EXECUTOR_KEYS:
        return _run_executor(k, subject, n)
    kw = {}
    if k == "value":
        v = subject.Value("i", 0)
        kw = dict(initializer=_set_counter, initargs=(v,))
    pool = subject.pool(**kw)
    try:
        pool.apply(identity, (0,))  # the workers are up
        if k == "map":
            dt, r = _timed(lambda: pool.map(identity, range(n)))
            ok = r == list(range(n))
        elif k == "starmap":
            pairs = [(i, 1) for i in range(n)]
            dt, r = _timed(lambda: pool.starmap(add, pairs))
            ok = r == [i + 1 for i in range(n)]
        elif k == "imap":
            dt, r = _timed(lambda: list(pool.imap(identity, range(n), 1)))
            ok = r == list(range(n))
        elif k == "imap_unordered":
            dt, r = _timed(lambda: sorted(pool.imap_unordered(identity, range(n), 64)))
            ok = r == list(range(n))
        elif k == "apply_async":
            dt, r = _timed(lambda: [a.get() for a in
                                    [pool.apply_async(identity, (i,)) for i in range(n)]])
            ok = r == list(range(n))
        elif k == "apply":
            dt, r = _timed(lambda: [pool.apply(identity, (i,)) for i in range(n)])
            ok = r == list(range(n))
        elif k in ("to_workers", "echo"):
            payloads = [bytes([i % 251]) * (4 * MiB) for i in range(n)]
            fn = nbytes if k == "to_workers" else identity
            dt, r = _timed(lambda: pool.map(fn, payloads, 1))
            ok = r == ([4 * MiB] * n if k == "to_workers" else payloads)
        elif k == "big_result":
            dt, r = _timed(lambda: pool.apply(make_bytes, (n * MiB,)))
            ok = r == b"\x5a" * (n * MiB)
        elif k == "cpu":
            numbers = list(range(2**61 + 1, 2**61 + 1 + 2 * n, 2))
            dt, r = _timed(lambda: pool.map(is_prime, numbers))
            ok = r == _reference_primes(numbers)
        elif k in UNEVEN:
            return run_uneven(k, pool, n, processes)
        elif k == "value":
            per = n // processes
            dt, r = _timed(lambda: pool.map(bump, [per] * processes, 1))
            ok = v.value == per * processes
            n = per * processes
        else:
            raise ValueError(k)
    finally:
        pool.terminate()
        pool.join()
    if not ok:
        raise AssertionError(f"{subject.name}: wrong result in {w.title}")
    return dt, n


def _run_executor(k, subject, n):
    """(seconds, items) of an executor row: submit().result() round trips,
    n submits then their results, or map() of n tiny items (chunksize 1,
    the default of both)."""
    ex = subject.executor()
    try:
        ex.submit(identity, 0).result()     # the workers are up
        if k == "executor_submit":
            dt, r = _timed(lambda: [ex.submit(identity, i).result() for i in range(n)])
        elif k == "executor_pipelined":
            dt, r = _timed(lambda: [f.result() for f in
                                    [ex.submit(identity, i) for i in range(n)]])
        else:
            dt, r = _timed(lambda: list(ex.map(identity, range(n))))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    if r != list(range(n)):
        raise AssertionError(f"{subject.name}: wrong result in {k}")
    return dt, n


_IN_STARTUP_CHILD = False


def _startup_in_child(subject, n, processes):
    """Start-up runs in a fresh interpreter for each pool: a fork costs
    time in proportion to the memory of the process that forks (40 us per
    MiB on the 2-CPU VM of the README), and the earlier workloads leave
    this one hundreds of MiB larger than a program that starts its pool.
    (With a large parent both pools pay about the same: two forks.)"""
    import subprocess
    out = subprocess.run(
        [sys.executable, "-m", "cpool.bench", "--startup-child", subject.name,
         "--processes", str(processes), "--only", str(n)],
        check=True, capture_output=True, text=True).stdout
    return float(out.split()[0]), n


_ref_cache = {}


def _reference_primes(numbers):
    key = (numbers[0], len(numbers))
    if key not in _ref_cache:
        _ref_cache[key] = [is_prime(x) for x in numbers]
    return _ref_cache[key]


WORKLOADS = [
    Workload("map", "map, tiny items", "items/s", 1_000_000, 100_000),
    Workload("starmap", "starmap, tiny pairs", "items/s", 1_000_000, 100_000),
    Workload("imap", "imap, chunksize 1", "items/s", 100_000, 10_000),
    Workload("imap_unordered", "imap_unordered, chunksize 64", "items/s", 1_000_000, 100_000),
    Workload("apply_async", "pipelined apply_async", "calls/s", 100_000, 10_000),
    Workload("apply", "apply round trips", "calls/s", 20_000, 2_000),
    Workload("to_workers", "4 MiB payloads to workers", "payloads/s", 64, 16),
    Workload("echo", "4 MiB payloads echoed", "payloads/s", 64, 16),
    Workload("big_result", "one 200 MiB result", "MiB/s", 200, 50),
    Workload("cpu", "CPU-bound map (prime test)", "numbers/s", 40_000, 4_000),
    Workload("startup", "start-up to first result", "pools/s", 20, 5),
    Workload("value", "Value increments under its lock", "increments/s", 200_000, 20_000),
    # concurrent.futures.ProcessPoolExecutor against cpool.ProcessPoolExecutor
    Workload("executor_submit", "executor: submit round trips", "calls/s", 20_000, 2_000),
    Workload("executor_pipelined", "executor: pipelined submits", "calls/s", 50_000, 5_000),
    Workload("executor_map", "executor: map, tiny items", "items/s", 50_000, 5_000),
    # Uneven work: the percentage of the ideal (ideal_seconds) each pool
    # reaches; higher is better, 100 is no time lost.
    Workload("uneven_imap", "uneven work: imap, chunksize 1", "% of ideal", 400, 100),
    Workload("uneven_imap_unordered", "uneven work: imap_unordered", "% of ideal", 400, 100),
    Workload("uneven_map", "uneven work: map, chunksize 1", "% of ideal", 400, 100),
    Workload("uneven_apply_async", "uneven work: apply_async", "% of ideal", 400, 100),
    Workload("uneven_growing", "tasks growing along the input", "% of ideal", 400, 100),
    Workload("uneven_shrinking", "tasks shrinking along the input", "% of ideal", 400, 100),
    # n: the long task's length in ms
    Workload("long_then_map", "a long task, then a map of short ones", "% of ideal", 500,
             200),
]


def _progress(done, total, label):
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<48}")
    sys.stderr.flush()


def measure_floor():
    rtt = min(_cpool.futex_roundtrip(5000) for _ in range(3))
    spin = min(_cpool.futex_roundtrip(20000, spin=True) for _ in range(3))
    bw = _cpool.memcpy_bandwidth(64 * MiB, 5)
    return {"futex_roundtrip_us": rtt * 1e6, "spin_handoff_us": spin * 1e6,
            "memcpy_GBps": bw / 1e9}


def machine(args):
    return {"cpus": os.cpu_count(), "processes": args.processes,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def run_scaling(args):
    """The scaling section's report (--scaling): multiprocessing and cpool
    only (--against is for the table)."""
    from cpool import _bench_scaling
    keys = [k for k in args.only.split(",") if k] or _bench_scaling.KEYS
    unknown = sorted(set(keys) - set(_bench_scaling.KEYS))
    if unknown:
        sys.exit(f"--scaling --only: unknown curve(s) {', '.join(unknown)}; "
                 f"known: {', '.join(_bench_scaling.KEYS)}")
    mode = "tiny" if args.scaling_tiny else "quick" if args.quick else "full"
    scaling = _bench_scaling.run(keys, mode, args.repeat, args.processes,
                                 subjects(args.processes, []), _progress)
    sys.stderr.write("\r" + " " * 100 + "\r")
    return {"machine": machine(args), "cpool": cpool.__version__, "quick": args.quick,
            "repeat": args.repeat, "scaling": scaling}


def run(args):
    subs = subjects(args.processes, [a for a in args.against.split(",") if a])
    names = [s.name for s in subs]
    chosen = [w for w in WORKLOADS if not args.only or w.key in args.only.split(",")]
    results = []
    total = len(chosen) * len(subs) * args.repeat
    done = 0
    for w in chosen:
        n = w.n(args.quick)
        row = {"key": w.key, "workload": w.title, "unit": w.unit, "n": n, "by": {}}
        for rep in range(args.repeat):
            for s in subs:      # interleaved, so drift in the machine hits both
                _progress(done, total, f"{w.title} ({s.name})")
                done += 1
                if w.key not in s.has:
                    row["by"][s.name] = None
                    continue
                dt, items = run_workload(w, s, n, args.processes)
                row["by"].setdefault(s.name, []).append(items / dt)
        for name in names:
            vals = row["by"].get(name)
            row["by"][name] = statistics.median(vals) if vals else None
        mp_v, cp_v = row["by"]["multiprocessing"], row["by"]["cpool"]
        row["ratio"] = cp_v / mp_v if mp_v and cp_v else None
        results.append(row)
    _progress(total, total, "floor")
    floor = measure_floor()
    sys.stderr.write("\r" + " " * 100 + "\r")
    return {
        "machine": machine(args),
        "cpool": cpool.__version__, "quick": args.quick, "repeat": args.repeat,
        "subjects": names, "results": results, "floor": floor,
    }


def _fmt(v):
    if v is None:
        return "n/a"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.1f}"


def table(report):
    m = report["machine"]
    lines = [f"cpool {report['cpool']} benchmark: {m['processes']} workers, {m['cpus']} CPUs, "
             f"Python {m['python']}, {m['platform']}" + (" (quick)" if report["quick"] else "")]
    if "scaling" in report:
        from cpool import _bench_scaling
        return "\n".join(lines) + "\n" + _bench_scaling.table(report["scaling"], _fmt)
    names = report["subjects"]
    lines.append("")
    head = ["workload", "unit"] + names + ["cpool/mp"]
    rows = [head]
    for r in report["results"]:
        rows.append([r["workload"], r["unit"]] + [_fmt(r["by"][n]) for n in names] +
                    [f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j])
                               for j, c in enumerate(row)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    f = report["floor"]
    apply_row = next((r for r in report["results"] if r["key"] == "apply"), None)
    lines.append("")
    lines.append(f"floor: futex round trip between two processes {f['futex_roundtrip_us']:.2f} us "
                 f"(each side sleeps and is woken); the same hand-off with both sides "
                 f"spinning {f['spin_handoff_us']:.2f} us; memcpy {f['memcpy_GBps']:.2f} GB/s")
    if apply_row and apply_row["by"].get("cpool"):
        rt = 1e6 / apply_row["by"]["cpool"]
        lines.append(f"cpool apply round trip {rt:.1f} us = "
                     f"{rt / f['futex_roundtrip_us']:.1f}x the futex round trip, "
                     f"{rt / f['spin_handoff_us']:.1f}x the spinning hand-off")
    for key in ("echo", "to_workers", "big_result"):
        row = next((r for r in report["results"] if r["key"] == key), None)
        if row and row["by"].get("cpool"):
            mbps = row["by"]["cpool"] * (4 if key != "big_result" else 1) * MiB / 1e9
            lines.append(f"cpool {row['workload']}: {mbps:.2f} GB/s of payload "
                         f"({mbps / f['memcpy_GBps'] * 100:.0f}% of memcpy)")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install 'cpool[bench]'")
    return plt


def plot(report, path):
    plt = _pyplot()
    if "scaling" in report:
        from cpool import _bench_scaling
        return _bench_scaling.plot(report, path, plt)
    names = [n for n in report["subjects"] if n != "multiprocessing"]
    rows = report["results"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    height = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [(r["by"][name] / r["by"]["multiprocessing"])
                if r["by"].get(name) and r["by"].get("multiprocessing") else 0 for r in rows]
        ys = [i + j * height for i in range(len(rows))]
        ax.barh(ys, vals, height=height, label=name)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))])
    ax.set_yticklabels([r["workload"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("throughput / multiprocessing.Pool's (higher is better)")
    m = report["machine"]
    ax.set_title(f"cpool {report['cpool']}: {m['processes']} workers, Python {m['python']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare_cluster(address, processes, quick, repeat):
    """python -m cpool.bench --cluster ADDRESS: the same calls on cpool's
    local pool and on a cluster pool (a Dask scheduler's address, see
    cpool.cluster); the table of their times, and each engine's cost per
    task (an apply round trip, and a map with one item a task)."""
    n_map = 20_000 if quick else 200_000
    n_tasks = 100 if quick else 500
    n_apply = 50 if quick else 200
    numbers = list(range(2**61 + 1, 2**61 + 1 + 2 * (200 if quick else 2000), 2))
    rows = [
        ("map, tiny items", n_map, "items/s",
         lambda p: p.map(identity, range(n_map)) == list(range(n_map))),
        ("map, one item a task", n_tasks, "tasks/s",
         lambda p: p.map(identity, range(n_tasks), 1) == list(range(n_tasks))),
        ("apply round trip", n_apply, "calls/s",
         lambda p: [p.apply(identity, (i,)) for i in range(n_apply)] == list(range(n_apply))),
        ("CPU-bound map (is_prime)", len(numbers), "items/s",
         lambda p: p.map(is_prime, numbers) == _reference_primes(numbers)),
    ]
    pools = [("cpool", cpool.Pool(processes)),
             ("cluster", cpool.Pool(cluster=address))]
    times = {}
    try:
        for _, pool in pools:
            pool.apply(identity, (0,))      # the workers are up (and warm)
        for title, n, unit, call in rows:
            for name, pool in pools:
                runs = []
                for _ in range(repeat):
                    dt, ok = _timed(lambda: call(pool))
                    if not ok:
                        raise AssertionError(f"{name}: wrong result in {title}")
                    runs.append(dt)
                times[title, name] = statistics.median(runs)
    finally:
        for _, pool in pools:
            pool.terminate()
            pool.join()
    cl = pools[1][1]
    lines = [f"cpool {cpool.__version__}: local pool of {processes} workers against "
             f"a cluster pool on {address} ({cl._processes} threads)",
             f"{'workload':28} {'cpool':>14} {'cluster':>14} {'cluster/cpool':>14}"]
    for title, n, unit, _ in rows:
        a, b = n / times[title, "cpool"], n / times[title, "cluster"]
        lines.append(f"{title:28} {a:>14,.0f} {b:>14,.0f} {b / a:>14.3f}   {unit}")
    for title, n in (("apply round trip", n_apply), ("map, one item a task", n_tasks)):
        a, b = (times[title, k] / n * 1e6 for k in ("cpool", "cluster"))
        lines.append(f"per task, {title}: cpool {a:,.0f} µs, cluster {b:,.0f} µs "
                     f"(+{b - a:,.0f} µs)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cpool.bench",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per workload and pool; the median is reported (default 3, quick 1)")
    ap.add_argument("--processes", type=int, default=None,
                    help="workers (default: every CPU this process may use)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--plot", metavar="FILE.png",
                    help="bar chart of the ratios, or with --scaling its three panels "
                         "(needs matplotlib)")
    ap.add_argument("--against", default="",
                    help="comma-separated peers to add: concurrent.futures,loky,mpire")
    ap.add_argument("--only", default="",
                    help="comma-separated workload keys (with --scaling: curve keys)")
    ap.add_argument("--scaling", action="store_true",
                    help="how cost grows with n, item size and workers, instead of the table")
    ap.add_argument("--scaling-tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", metavar="ADDRESS",
                    help="instead: cpool's local pool against a pool on this Dask scheduler "
                         "(tcp://host:8786; pip install cpool[cluster])")
    ap.add_argument("--startup-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.startup_child:  # see _startup_in_child: --only carries n
        global _IN_STARTUP_CHILD
        _IN_STARTUP_CHILD = True
        peers = [] if args.startup_child in ("multiprocessing", "cpool") else [args.startup_child]
        subject = next(s for s in subjects(args.processes, peers)
                       if s.name == args.startup_child)
        w = next(w for w in WORKLOADS if w.key == "startup")
        print(run_workload(w, subject, int(args.only), args.processes)[0])
        return 0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.processes is None:
        args.processes = cpool.pool._default_processes()
    if args.cluster:
        print(compare_cluster(args.cluster, args.processes, args.quick, args.repeat))
        return 0
    report = run_scaling(args) if args.scaling or args.scaling_tiny else run(args)
    print(json.dumps(report, indent=2) if args.json else table(report))
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
