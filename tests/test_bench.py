"""The benchmark runs and its numbers are checked results (speed goals live
in the benchmark itself, never in timed tests)."""
import json

from conftest import run_python


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

    class Liar:
        def __init__(self, real):
            self.real = real

        def map(self, f, it, chunksize=None):
            out = self.real.map(f, it, chunksize)
            out[0] = "wrong"
            return out

        def __getattr__(self, name):
            return getattr(self.real, name)

    subject = bench.PoolSubject("cpool", lambda n, **kw: Liar(bench.cpool.Pool(n, **kw)),
                                bench.cpool.Value, 2)
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
