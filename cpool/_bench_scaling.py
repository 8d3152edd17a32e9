"""The benchmark's scaling section (python -m cpool.bench --scaling): how
cost grows with the number of items, the size of each item and the number of
workers, for cpool and multiprocessing.Pool, beside the in-process serial
figure.

Three families of curves, each point the median of --repeat runs, every
result checked against the in-process reference:

- items: items/s of map(identity, range(n)) as n grows; the serial figure is
  list(map(identity, range(n))) in this process.  A small n is timed over
  several calls in a row, so the per-call cost shows as the curve's left end.
- to_workers, from_workers, echo: MB/s (1e6 bytes of payload per second) as
  the item size grows, over a fixed total of distinct bytes objects per point
  (one item when the size is above it); map with its default chunksize.  To
  workers: the worker returns len(); from workers: the worker makes the bytes;
  echo: both.  The serial figure is one in-process copy, bytes(memoryview(b)),
  of the same items, after an untimed one; a pool's, its third map of them
  (a pool in use), and the table adds cpool's first (a fresh pool's, which
  pays for the shared memory it touches first).
- workers_cpu, workers_tiny: throughput as workers grow from 1 to the CPU
  count (powers of two, then the count itself) for the CPU-bound prime test
  (work in proportion to the workers, so every point lasts about as long) and
  for tiny items (a fixed n); the ideal is the serial rate times the workers.
  The prime test also has the machine's own figure ("processes"): the serial
  loop run in as many forked processes at once, with no pool and nothing
  between them, so that the ideal's distance from it is the machine's (CPU
  steal, cores that share a cache or a clock, this process's own threads),
  and cpool's distance from it the pool's.
"""
import math
import os
import signal
import statistics
import time

MiB = 1 << 20

# Sizes of each family: full, --quick, and the hidden --scaling-tiny the
# tests use (seconds, not minutes).
SIZES = {
    "full": dict(items=[1_000, 10_000, 100_000, 1_000_000, 4_000_000], items_floor=100_000,
                 sizes=[1 << 10, 64 << 10, MiB, 16 * MiB, 64 * MiB, 256 * MiB],
                 total=64 * MiB, cpu_per_worker=10_000, tiny_n=1_000_000),
    "quick": dict(items=[1_000, 10_000, 100_000], items_floor=20_000,
                  sizes=[1 << 10, 64 << 10, MiB, 16 * MiB], total=16 * MiB,
                  cpu_per_worker=2_000, tiny_n=100_000),
    "tiny": dict(items=[100, 1_000], items_floor=1_000, sizes=[1 << 10, 64 << 10, MiB],
                 total=2 * MiB, cpu_per_worker=200, tiny_n=10_000, max_workers=2),
}

CURVES = [
    # key, title, x label, unit
    ("items", "map(identity, range(n)), tiny items", "n", "items/s"),
    ("to_workers", "bytes to workers (worker returns len)", "item bytes", "MB/s"),
    ("from_workers", "bytes from workers (worker makes them)", "item bytes", "MB/s"),
    ("echo", "bytes echoed (to workers and back)", "item bytes", "MB/s"),
    ("workers_cpu", "CPU-bound map (prime test), work per worker fixed", "workers",
     "numbers/s"),
    ("workers_tiny", "map(identity, range(n)), n fixed", "workers", "items/s"),
]
KEYS = [c[0] for c in CURVES]
SIZE_KEYS = ("to_workers", "from_workers", "echo")


def worker_counts(most):
    """1, 2, 4, ... below `most`, then `most`: a handful of points on any
    machine (7 on 64 cores)."""
    out, w = [], 1
    while w < most:
        out.append(w)
        w *= 2
    return out + [most]


def size_label(b):
    for unit, k in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if b >= k and b % k == 0:
            return f"{b // k} {unit}"
    return f"{b} B"


class _Plan:
    """The points of every chosen curve, and one step per (point, figure,
    run) for the progress bar."""

    def __init__(self, keys, cfg, processes, subjects):
        self.keys, self.cfg, self.processes = keys, cfg, processes
        self.names = ["serial"] + [s.name for s in subjects]
        self.most = min(processes, cfg.get("max_workers", processes))

    def names_for(self, key):
        return self.names + (["processes"] if key == "workers_cpu" else [])

    def xs(self, key):
        if key == "items":
            return self.cfg["items"]
        if key in SIZE_KEYS:
            return self.cfg["sizes"]
        return worker_counts(self.most)

    def steps(self, repeat):
        return sum(len(self.xs(k)) * len(self.names_for(k)) for k in self.keys) * repeat


def _timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def _with_pool(subject, processes, body):
    """body(pool) on a fresh pool of `processes` workers, all of them up
    (a small map with chunksize 1 first), terminated after."""
    from cpool import bench
    pool = subject._factory(processes)
    try:
        pool.map(bench.identity, range(4 * processes), 1)
        return body(pool)
    finally:
        pool.terminate()
        pool.join()


class _Payloads:
    """The items of one size point, made once and shared by every figure:
    distinct bytes objects, `total` bytes in all (one item when the size is
    larger)."""

    def __init__(self, size, total):
        self.size, self.count = size, max(1, total // size)
        self.items = None

    def get(self):
        if self.items is None:
            self.items = [bytes([i % 251]) * self.size for i in range(self.count)]
        return self.items

    def drop(self):
        self.items = None


def _measure_items(name, subject, n, cfg, processes):
    """(seconds, items) for map(identity, range(n)), called k times in a
    row so that a small n is timed over at least items_floor items.  Only
    the calls are timed: each result is checked (and freed) between them,
    off the clock, as the other curves check theirs."""
    from cpool import bench
    k = max(1, math.ceil(cfg["items_floor"] / n))
    want = list(range(n))

    def calls(mapper):
        ok, dt = True, 0.0
        for _ in range(k):
            t0 = time.perf_counter()
            r = mapper(bench.identity, range(n))
            dt += time.perf_counter() - t0
            ok = (r == want) and ok
            del r
        return dt, ok

    if name == "serial":
        dt, ok = calls(lambda f, it: list(map(f, it)))
    else:
        dt, ok = _with_pool(subject, processes, lambda pool: calls(pool.map))
    return dt, k * n, ok


def _measure_size(key, name, subject, payloads, processes):
    """(seconds, bytes of payload, ok, first) for one size point.  A pool
    runs the map three times: the third call is the figure (a pool in use:
    by then both ends have mapped the segments they reuse; the serial copy
    has its warm pass too), first the fresh pool's first call, which pays
    for memory no one has touched yet (None for serial)."""
    from cpool import bench
    size, count = payloads.size, payloads.count
    if name == "serial":
        # One untimed pass first: then the copies land in memory the
        # allocator has used before, as a long-running parent's do (items
        # above malloc's mmap threshold, 32 MiB at most, still get fresh
        # pages and pay their page faults).
        items = payloads.get()
        warm = [bytes(memoryview(b)) for b in items]
        del warm
        dt, copies = _timed(lambda: [bytes(memoryview(b)) for b in items])
        ok = copies == items and all(c is not b for c, b in zip(copies, items))
        return dt, size * count, ok, None
    if key == "from_workers":
        fn, args = bench.make_bytes, [size] * count
        want = [b"\x5a" * size] * count
    else:
        fn = bench.nbytes if key == "to_workers" else bench.identity
        args = payloads.get()
        want = [size] * count if key == "to_workers" else args

    def body(pool):
        first, r = _timed(lambda: pool.map(fn, args))
        ok = r == want
        del r
        ok = pool.map(fn, args) == want and ok
        dt, r = _timed(lambda: pool.map(fn, args))
        return dt, ok and r == want, first
    dt, ok, first = _with_pool(subject, processes, body)
    return dt, size * count, ok, first


class _CpuRef:
    """The prime test's numbers and their in-process answers, computed once
    for the most workers and sliced for fewer."""

    def __init__(self, per_worker, most):
        self.per_worker, self.most = per_worker, most
        self.numbers = list(range(2**61 + 1, 2**61 + 1 + 2 * per_worker * most, 2))
        self.answers = None

    def reference(self, n):
        from cpool import bench
        if self.answers is None:
            self.answers = [bench.is_prime(x) for x in self.numbers]
        return self.answers[:n]


def _forked_processes(numbers, w):
    """(seconds, answers): w forked processes at once, each running the
    serial figure's loop (the prime test over `numbers`, one worker's
    share) with no pool, and writing its answers to a pipe of its own.  The
    same work in each, so that nothing is lost to uneven shares.  Each
    process runs the test on a few numbers and says it is ready before the
    start signal, as a pool's workers are warm (a fresh fork's first pass
    pays for its page faults); timed from the signal to the last answer,
    not the exits.  A process that fails answers short: the check fails."""
    from cpool import bench
    go_r, go_w = os.pipe()
    kids, done = [], False
    try:
        for _ in range(w):
            r, wr = os.pipe()
            try:
                pid = os.fork()
            except BaseException:
                os.close(r)
                os.close(wr)
                raise
            if pid == 0:    # pragma: no cover (a child)
                try:
                    os.close(go_w)
                    for x in numbers[:8]:
                        bench.is_prime(x)
                    os.write(wr, b"r")
                    os.read(go_r, 1)
                    out = bytes(bench.is_prime(x) for x in numbers)
                    while out:
                        out = out[os.write(wr, out):]
                except BaseException:
                    os._exit(1)
                os._exit(0)
            kids.append((pid, r))
            os.close(wr)
        for _, r in kids:
            os.read(r, 1)   # ready (or gone)
        t0 = time.perf_counter()
        os.write(go_w, b"go" * w)
        parts = []
        for _, r in kids:
            part = b""
            while len(part) < len(numbers) and (chunk := os.read(r, len(numbers) - len(part))):
                part += chunk
            parts.append([bool(b) for b in part])
        dt = time.perf_counter() - t0
        done = True
    finally:
        os.close(go_r)
        os.close(go_w)
        for pid, r in kids:
            os.close(r)
            if not done:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return dt, parts


def _measure_workers(key, name, subject, w, cfg, cpu_ref):
    from cpool import bench
    if key == "workers_tiny":
        n = cfg["tiny_n"]
        want = list(range(n))
        if name == "serial":
            dt, r = _timed(lambda: list(map(bench.identity, range(n))))
        else:
            dt, r = _with_pool(subject, w, lambda pool: _timed(
                lambda: pool.map(bench.identity, range(n))))
        return dt, n, r == want
    if name == "serial":
        # The serial rate: one worker's share, in this process.
        n = cpu_ref.per_worker
        dt, r = _timed(lambda: [bench.is_prime(x) for x in cpu_ref.numbers[:n]])
        return dt, n, r == cpu_ref.reference(n)
    if name == "processes":
        # That loop in w processes at once.
        n = cpu_ref.per_worker
        dt, parts = _forked_processes(cpu_ref.numbers[:n], w)
        return dt, n * w, parts == [cpu_ref.reference(n)] * w
    n = cpu_ref.per_worker * w
    numbers = cpu_ref.numbers[:n]
    dt, r = _with_pool(subject, w, lambda pool: _timed(lambda: pool.map(bench.is_prime,
                                                                        numbers)))
    return dt, n, r == cpu_ref.reference(n)


def run(keys, mode, repeat, processes, subjects, progress):
    """The scaling report: {"curves": [...]}, each curve's points in order,
    each point {"x", "n", "by": {name: median}, "checked": {name: True}}
    (and "ideal" on the workers curves); "n" is the items one pool run
    times (for the sizes: the items of size x).  Raises AssertionError on a
    wrong result."""
    cfg = SIZES[mode]
    plan = _Plan(keys, cfg, processes, subjects)
    by_name = {s.name: s for s in subjects}
    total, done = plan.steps(repeat), 0
    cpu_ref = (_CpuRef(cfg["cpu_per_worker"], plan.most)
               if "workers_cpu" in keys else None)
    curves = []
    for key, title, xlabel, unit in CURVES:
        if key not in keys:
            continue
        points = []
        for x in plan.xs(key):
            payloads = _Payloads(x, cfg["total"]) if key in SIZE_KEYS else None
            names = plan.names_for(key)
            runs = {name: [] for name in names}
            firsts = {name: [] for name in names if name != "serial"}
            checked = {}
            amount = None
            for _ in range(repeat):
                for name in names:          # interleaved, as in the table
                    label = size_label(x) if key in SIZE_KEYS else f"{x:,}"
                    progress(done, total, f"{key} {label} ({name})")
                    done += 1
                    subject = by_name.get(name)
                    if key == "items":
                        dt, amount, ok = _measure_items(name, subject, x, cfg, processes)
                    elif key in SIZE_KEYS:
                        dt, amount, ok, first = _measure_size(key, name, subject,
                                                              payloads, processes)
                        if first is not None:
                            firsts[name].append(amount / first / 1e6)
                    else:
                        dt, amount, ok = _measure_workers(key, name, subject, x, cfg,
                                                          cpu_ref)
                    if not ok:
                        raise AssertionError(f"{name}: wrong result in scaling {key}, x={x}")
                    checked[name] = True
                    rate = amount / dt
                    runs[name].append(rate / 1e6 if unit == "MB/s" else rate)
            if payloads:
                payloads.drop()
            point = {"x": x, "n": amount if key not in SIZE_KEYS else payloads.count,
                     "by": {name: statistics.median(v) for name, v in runs.items()},
                     "checked": checked}
            if key in SIZE_KEYS:
                point["first"] = {name: statistics.median(v) for name, v in firsts.items()}
            if key.startswith("workers_"):
                point["ideal"] = point["by"]["serial"] * x
            points.append(point)
        curves.append({"key": key, "title": title, "x": xlabel, "unit": unit,
                       "points": points})
    return {"mode": mode, "processes": processes, "max_workers": plan.most,
            "curves": curves}


def table(scaling, fmt):
    """One text table per curve; fmt formats a throughput."""
    lines = []
    for c in scaling["curves"]:
        workers = c["key"].startswith("workers_")
        names = list(c["points"][0]["by"]) if c["points"] else []
        sizes = c["key"] in SIZE_KEYS
        forked = "processes" in names
        head = [c["x"]] + names + (["ideal", "cpool/ideal"] if workers else []) + \
            (["cpool/processes", "processes/ideal"] if forked else []) + \
            ["cpool/mp", "cpool/serial"] + (["cpool 1st call"] if sizes else [])
        rows = [head]
        for p in c["points"]:
            by = p["by"]
            if c["key"] in SIZE_KEYS:
                x = size_label(p["x"]) + (f" x{p['n']}" if p["n"] > 1 else "")
            else:
                x = f"{p['x']:,}"
            row = [x] + [fmt(by[n]) for n in names]
            if workers:
                row += [fmt(p["ideal"]), f"{by['cpool'] / p['ideal']:.2f}x"]
            if forked:
                row += [f"{by['cpool'] / by['processes']:.2f}x",
                        f"{by['processes'] / p['ideal']:.2f}x"]
            row += [f"{by['cpool'] / by['multiprocessing']:.2f}x",
                    f"{by['cpool'] / by['serial']:.2f}x"]
            if sizes:
                row.append(fmt(p["first"]["cpool"]))
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines += ["", f"{c['title']}: {c['unit']}"]
        for i, r in enumerate(rows):
            lines.append("  ".join(s.ljust(widths[j]) if j == 0 else s.rjust(widths[j])
                                   for j, s in enumerate(r)))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_STYLE = {"serial": dict(color="black"), "multiprocessing": dict(color="tab:orange"),
          "cpool": dict(color="tab:blue")}
_DIRECTION = {"to_workers": ("-", "to workers"), "from_workers": ("--", "from workers"),
              "echo": (":", "echo")}


def plot(report, path, plt):
    """Three panels, log axes: items/s against n, MB/s against item size,
    throughput against workers."""
    curves = {c["key"]: c for c in report["scaling"]["curves"]}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    ax = axes[0]
    if "items" in curves:
        c = curves["items"]
        for name, style in _STYLE.items():
            ax.plot([p["x"] for p in c["points"]], [p["by"][name] for p in c["points"]],
                    marker="o", label=name + (" (in-process)" if name == "serial" else ""),
                    **style)
    ax.set(xscale="log", yscale="log", xlabel="n (items in one map call)", ylabel="items/s",
           title="map(identity, range(n))")
    ax = axes[1]
    ax.set_xscale("log")    # before the ticks: setting the scale resets them
    serial_done = False
    for key in SIZE_KEYS:
        if key not in curves:
            continue
        c = curves[key]
        xs = [p["x"] for p in c["points"]]
        ls, what = _DIRECTION[key]
        for name in ("multiprocessing", "cpool"):
            ax.plot(xs, [p["by"][name] for p in c["points"]], linestyle=ls, marker="o",
                    label=f"{name}, {what}", **_STYLE[name])
        if not serial_done:
            ax.plot(xs, [p["by"]["serial"] for p in c["points"]], marker="s",
                    label="one in-process copy", **_STYLE["serial"])
            serial_done = True
        ax.set_xticks(xs)
        ax.set_xticklabels([size_label(x).replace(" ", "") for x in xs])
    ax.set(yscale="log", xlabel="item size (distinct bytes objects)",
           ylabel="MB/s of payload", title="bytes through map, by item size")
    ax.minorticks_off()
    ax = axes[2]
    ax.set_xscale("log", base=2)
    for key, ls, what in (("workers_cpu", "-", "prime test"),
                          ("workers_tiny", "--", "tiny items")):
        if key not in curves:
            continue
        c = curves[key]
        xs = [p["x"] for p in c["points"]]
        for name in ("multiprocessing", "cpool"):
            ax.plot(xs, [p["by"][name] for p in c["points"]], linestyle=ls, marker="o",
                    label=f"{name}, {what}", **_STYLE[name])
        ax.plot(xs, [p["ideal"] for p in c["points"]], linestyle=ls, color="grey",
                label=f"ideal (serial x workers), {what}")
        if "processes" in c["points"][0]["by"]:
            ax.plot(xs, [p["by"]["processes"] for p in c["points"]], linestyle=ls,
                    marker="x", color="tab:green", label=f"forked processes, no pool, {what}")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
    ax.set(yscale="log", xlabel="workers", ylabel="items (numbers) per second",
           title="throughput by workers")
    ax.minorticks_off()
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"cpool {report['cpool']}: how cost grows ({m['cpus']} CPUs, "
                 f"{report['scaling']['processes']} workers unless varied, "
                 f"Python {m['python']}, median of {report['repeat']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
