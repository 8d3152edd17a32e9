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
