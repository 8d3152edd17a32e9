"""The benchmark runs and its numbers are checked results (speed goals live
in the benchmark itself, never in timed tests)."""
import json

import pytest

from conftest import run_python


def cpool_whose_map(answer):
    """The benchmark's cpool subject, its pools' map answering
    answer(the real result) instead of the real result."""
    from cpool import bench

    class Wrapped:
        def __init__(self, real):
            self.real = real

        def map(self, f, it, chunksize=None):
            return answer(self.real.map(f, it, chunksize))

        def __getattr__(self, name):
            return getattr(self.real, name)

    return bench.PoolSubject("cpool", lambda n, **kw: Wrapped(bench.cpool.Pool(n, **kw)),
                             bench.cpool.Value, 2)


def spoiled(at):
    """An answer for cpool_whose_map: the result with item `at` wrong."""
    def answer(out):
        out[at] = "wrong"
        return out
    return answer


def test_benchmark_quick_json_covers_every_workload():
    from cpool import bench
    p = run_python(module="cpool.bench", args=["--quick", "--json"], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    assert [r["key"] for r in report["results"]] == [w.key for w in bench.WORKLOADS]
    for row in report["results"]:
        for name in ("multiprocessing", "cpool"):
            assert row["by"][name] > 0, row
        assert row["ratio"] == row["by"]["cpool"] / row["by"]["multiprocessing"]
    assert report["floor"]["futex_roundtrip_us"] > 0
    assert report["floor"]["spin_handoff_us"] > 0
    assert report["floor"]["memcpy_GBps"] > 0
    assert "[" in p.stderr    # the progress bar


def test_benchmark_rejects_a_wrong_result(monkeypatch):
    # Every result is checked: a pool that answers wrongly fails the run.
    from cpool import bench
    subject = cpool_whose_map(spoiled(0))
    workload = next(w for w in bench.WORKLOADS if w.key == "map")
    try:
        bench.run_workload(workload, subject, 1000, 2)
    except AssertionError as e:
        assert "wrong result" in str(e)
    else:
        raise AssertionError("a wrong map result was not caught")


def test_the_ideal_of_uneven_work_is_greedy_list_scheduling():
    from cpool._bench_uneven import ideal_seconds, uneven_mix
    assert ideal_seconds([1, 1, 1, 1], 2, 0) == 2
    assert ideal_seconds([3, 1, 1, 1], 2, 0) == 3        # the long one, beside the rest
    assert ideal_seconds([1, 1, 1, 3], 2, 0) == 4        # in input order: it starts at 1
    assert ideal_seconds([1, 1], 4, 0.5) == 1.5          # each pays the overshoot
    mix = uneven_mix(400)
    assert mix.count(0.2) == 4 and mix.count(0.05) == 16 and mix.count(0.001) == 380


# -- the scaling section (python -m cpool.bench --scaling) ----------------------

@pytest.fixture(scope="module")
def scaling_report(tmp_path_factory):
    """One run of the scaling section at its hidden tiny sizes (seconds),
    with its plot when matplotlib is installed."""
    png = tmp_path_factory.mktemp("scaling") / "scaling.png"
    try:
        import matplotlib  # noqa: F401
        plot = ["--plot", str(png)]
    except ImportError:
        plot = []
    p = run_python(module="cpool.bench", args=["--scaling-tiny", "--json", "--repeat", "2",
                                                *plot], timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout), png if plot else None, p


def test_scaling_json_has_every_curve_checked_and_positive(scaling_report):
    import os
    from cpool import _bench_scaling as sc
    report, _, p = scaling_report
    tiny = sc.SIZES["tiny"]
    most = min(cpool_default_processes(), 2)
    want_x = {"items": tiny["items"], "to_workers": tiny["sizes"],
              "from_workers": tiny["sizes"], "echo": tiny["sizes"],
              "workers_cpu": sc.worker_counts(most), "workers_tiny": sc.worker_counts(most)}
    assert report["repeat"] == 2 and report["machine"]["cpus"] == os.cpu_count()
    scaling = report["scaling"]
    assert scaling["mode"] == "tiny" and scaling["max_workers"] == most
    assert [c["key"] for c in scaling["curves"]] == sc.KEYS
    for c in scaling["curves"]:
        assert c["unit"] and c["title"] and c["x"]
        assert [pt["x"] for pt in c["points"]] == want_x[c["key"]], c["key"]
        for pt in c["points"]:
            names = ("serial", "multiprocessing", "cpool")
            if c["key"] == "workers_cpu":   # the machine's figure: no pool
                names += ("processes",)
            assert sorted(pt["by"]) == sorted(names), pt
            assert all(pt["by"][n] > 0 for n in names), (c["key"], pt)
            assert pt["checked"] == {n: True for n in names}, (c["key"], pt)
            assert pt["n"] >= 1
            if c["key"].startswith("workers_"):
                assert pt["ideal"] == pt["by"]["serial"] * pt["x"]
            else:
                assert "ideal" not in pt
            # The size curves: each pool's first call on its fresh pool too.
            if c["key"] in sc.SIZE_KEYS:
                assert sorted(pt["first"]) == ["cpool", "multiprocessing"], pt
                assert all(v > 0 for v in pt["first"].values()), pt
            else:
                assert "first" not in pt
    sizes = {c["key"]: c for c in scaling["curves"]}["echo"]["points"]
    assert [pt["n"] for pt in sizes] == [tiny["total"] // s for s in tiny["sizes"]]
    # The text table has them too (same run, without --json: the header
    # line and one table per curve).
    assert "[" in p.stderr    # the progress bar


def test_scaling_plot_is_a_png(scaling_report):
    pytest.importorskip("matplotlib")
    _, png, _ = scaling_report
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_scaling_text_table_and_curve_choice():
    p = run_python(module="cpool.bench", args=["--scaling-tiny", "--only", "items,echo"],
                   timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "map(identity, range(n)), tiny items: items/s" in p.stdout
    assert "bytes echoed (to workers and back): MB/s" in p.stdout
    assert "prime test" not in p.stdout and "bytes to workers" not in p.stdout
    assert "1 KiB x2048" in p.stdout and "cpool/serial" in p.stdout
    assert "cpool 1st call" in p.stdout
    bad = run_python(module="cpool.bench", args=["--scaling", "--only", "items,nope"],
                     timeout=60)
    assert bad.returncode != 0 and "unknown curve(s) nope" in bad.stderr


def test_scaling_worker_counts_stay_few_on_many_cores():
    from cpool._bench_scaling import worker_counts
    assert worker_counts(1) == [1]
    assert worker_counts(2) == [1, 2]
    assert worker_counts(6) == [1, 2, 4, 6]
    assert worker_counts(48) == [1, 2, 4, 8, 16, 32, 48]
    assert worker_counts(64) == [1, 2, 4, 8, 16, 32, 64]


def test_scaling_rejects_a_wrong_result():
    # Every figure is checked: a pool whose map answers wrongly fails the
    # section, whichever curve it is on.
    from cpool import _bench_scaling
    liar = cpool_whose_map(spoiled(-1))
    for key in ("items", "from_workers", "workers_cpu"):
        with pytest.raises(AssertionError, match=f"cpool: wrong result in scaling {key}"):
            _bench_scaling.run([key], "tiny", 1, 2, [liar], lambda *a: None)


def test_scaling_forked_processes_each_run_the_whole_loop():
    # The machine's figure on the workers curve: w processes, no pool, each
    # the serial loop over the same numbers; their answers come back whole.
    from cpool import _bench_scaling, bench
    numbers = list(range(2**61 + 1, 2**61 + 1 + 2 * 50, 2))
    dt, parts = _bench_scaling._forked_processes(numbers, 3)
    assert dt > 0 and parts == [[bench.is_prime(x) for x in numbers]] * 3
    # A process that raises answers nothing, so the check fails; it does not
    # hang the section, whether it fails before it is ready (in its warm-up
    # on the first 8 numbers) or after.
    for numbers in ([2**61 + 1, "not a number"], [2**61 + 1] * 8 + ["not a number"]):
        dt, parts = _bench_scaling._forked_processes(numbers, 2)
        assert parts == [[], []]


def test_scaling_times_the_calls_not_the_checks():
    # The items curve checks each map's result between the calls, off the
    # clock: a result whose comparison takes 1 s must not show in the time.
    import time
    from cpool import _bench_scaling

    class SlowToCompare(list):
        def __eq__(self, other):
            time.sleep(1.0)
            return list.__eq__(self, other)

    slow = cpool_whose_map(SlowToCompare)
    cfg = dict(_bench_scaling.SIZES["tiny"], items_floor=1_000)
    dt, items, ok = _bench_scaling._measure_items("cpool", slow, 1_000, cfg, 2)
    assert ok and items == 1_000
    assert dt < 1.0, dt     # one call on a warm pool: milliseconds


def cpool_default_processes():
    from cpool.pool import _default_processes
    return _default_processes()
