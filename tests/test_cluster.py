"""cpool.Pool on a Dask cluster (cpool/cluster.py): the same API and
semantics as a local pool, against a real distributed.LocalCluster whose two
workers are processes (one thread each), started once for the module.

What runs in a Dask worker is a module-level function here or in tasks.py
(the workers import them by reference: they get this folder on sys.path, as
multiprocessing's spawned children do)."""
import itertools
import multiprocessing.pool as mpool
import os
import signal
import textwrap
import threading
import time
import unittest

import pytest

import cpool
from conftest import run_python, run_scenario, shutdown
from test_tutorials import TUTORIALS
from tasks import T, fail_on_three, report_pid_and_sleep, sleep_then, sleepy_identity, square

import dask
import distributed
import test._test_multiprocessing as tmp

_ADDRESS = [None]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # One task per worker thread at a time (Dask's default, 1.1, may queue a
    # second on a busy worker): a chunk then never waits behind a long task
    # while the other worker idles (the README recommends it).
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0")
    client = distributed.Client(lc, set_as_default=False)
    _ADDRESS[0] = lc.scheduler_address
    try:
        yield client
    finally:
        client.close()
        lc.close()


@pytest.fixture(scope="module")
def cpool_(cluster):
    """A cluster pool shared by the module's tests that leave it running."""
    p = cpool.Pool(cluster=cluster)
    yield p
    shutdown(p)


@pytest.fixture
def fresh(cluster):
    """A cluster pool of the test's own (for terminate, initializers...)."""
    made = []

    def make(*args, **kwargs):
        p = cpool.Pool(*args, cluster=cluster, **kwargs)
        made.append(p)
        return p
    yield make
    for p in made:
        shutdown(p)


def _worker_pid(_=None):
    return os.getpid()


def _return_lock(_):
    return threading.Lock()


def _count_reads(log, it):
    for x in it:
        log.append(x)
        yield x


# -- the object and its results are multiprocessing's --

def test_a_cluster_pool_is_a_pool_with_multiprocessing_results(cpool_):
    assert type(cpool_).__name__ == "ClusterPool"
    assert isinstance(cpool_, cpool.Pool) and isinstance(cpool_, mpool.Pool)
    assert cpool_._processes == 2   # the cluster's threads
    r = cpool_.apply_async(square, (3,))
    m = cpool_.map_async(square, range(5))
    it = cpool_.imap(square, range(3))
    iu = cpool_.imap_unordered(square, range(3))
    assert isinstance(r, mpool.ApplyResult) and isinstance(m, mpool.MapResult)
    assert isinstance(it, mpool.IMapIterator)
    assert isinstance(iu, mpool.IMapUnorderedIterator)
    assert r.get(T) == 9 and m.get(T) == [0, 1, 4, 9, 16]
    assert list(it) == [0, 1, 4] and sorted(iu) == [0, 1, 4]
    assert r.ready() and r.successful()


def test_the_tasks_run_in_the_dask_workers(cpool_, cluster):
    workers = set(cluster.run(os.getpid).values())
    pids = set(cpool_.map(_worker_pid, range(40), chunksize=1))
    assert pids <= workers and os.getpid() not in pids


# -- map family --

def test_map_starmap_apply(cpool_):
    assert cpool_.map(square, range(100)) == [x * x for x in range(100)]
    assert cpool_.map(square, []) == []
    assert cpool_.starmap(pow, [(2, 5), (3, 3)]) == [32, 27]
    assert cpool_.starmap_async(divmod, [(7, 2)]).get(T) == [(3, 1)]
    assert cpool_.apply(max, (3, 9)) == 9
    assert cpool_.apply(sorted, ([3, 1, 2],), {"reverse": True}) == [3, 2, 1]
    # lambdas and functions of __main__ travel by value (cloudpickle)
    assert cpool_.apply(lambda a: a + 1, (1,)) == 2
    assert cpool_.map(lambda a: -a, range(3)) == [0, -1, -2]


def test_a_chunk_is_one_dask_task_with_the_local_default_chunksize(cpool_, monkeypatch):
    client = cpool_._core._client
    calls = []
    real = client.submit
    monkeypatch.setattr(client, "submit", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert cpool_.map(square, range(100)) == [x * x for x in range(100)]
    # as locally: ceil(100 / (4 * 2 workers)) = 13 items a chunk, so 8 chunks
    assert len(calls) == 8
    del calls[:]
    assert cpool_.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert len(calls) == 4


def test_imap_in_order_and_lazy_with_bounded_read_ahead(cpool_):
    read = []
    it = cpool_.imap(square, _count_reads(read, itertools.count()))
    got = [next(it) for _ in range(20)]
    assert got == [x * x for x in range(20)]
    # read in the consumer's thread, a window (4 chunks per allowed task)
    # ahead of what has arrived: an endless input is no trouble
    ahead = len(read)
    assert ahead < 20 + 3 * 4 * 2
    time.sleep(0.3)
    assert len(read) == ahead
    read2 = []
    it2 = cpool_.imap(square, _count_reads(read2, range(1000)), chunksize=10, buffersize=2)
    assert next(it2) == 0
    assert len(read2) <= 3 * 10


def test_imap_unordered_as_completed(cpool_):
    items = [(1.0, "slow"), (0.0, "fast")]
    got = list(cpool_.imap_unordered(sleepy_identity, items))
    assert got == ["fast", "slow"]
    got = list(cpool_.imap(sleepy_identity, items))
    assert got == ["slow", "fast"]


# -- results: callbacks, timeouts, errors --

def test_callbacks_run_on_a_thread_of_cpool(cpool_):
    seen, errs, threads = [], [], []
    done = threading.Event()

    def cb(v):
        seen.append(v)
        threads.append(threading.current_thread())

    r = cpool_.apply_async(square, (4,), callback=cb)
    m = cpool_.map_async(fail_on_three, range(5), chunksize=1,
                         error_callback=lambda e: (errs.append(e), done.set()))
    assert r.get(T) == 16
    assert done.wait(T)
    assert seen == [16] and threads[0] is not threading.main_thread()
    assert isinstance(errs[0], KeyError) and not m.successful()


def test_a_callback_that_raises_does_not_stop_later_results(cpool_, capfd):
    r = cpool_.apply_async(square, (2,), callback=lambda v: 1 / 0)
    r.wait(T)
    assert cpool_.apply(square, (5,)) == 25
    assert r.get(T) == 4


def test_get_timeout_raises_cpool_timeout_and_the_result_comes_later(cpool_):
    r = cpool_.apply_async(sleep_then, (1.0, "late"))
    with pytest.raises(cpool.TimeoutError):
        r.get(0.05)
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    r.wait(T)
    assert r.get(0) == "late"
    it = cpool_.imap(sleep_then, [1.0])
    with pytest.raises(cpool.TimeoutError):
        it.next(0.05)
    assert it.next(T) is None


def test_a_task_error_arrives_as_locally(cpool_):
    with pytest.raises(KeyError) as info:
        cpool_.map(fail_on_three, range(6), chunksize=2)
    cause = info.value.__cause__
    assert isinstance(cause, mpool.RemoteTraceback)
    assert "fail_on_three" in str(cause)
    with pytest.raises(ZeroDivisionError) as info:
        cpool_.apply(divmod, (1, 0))
    assert isinstance(info.value.__cause__, mpool.RemoteTraceback)
    it = cpool_.imap(fail_on_three, range(6))
    assert [next(it) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(KeyError):
        next(it)
    assert next(it) == 40     # chunksize 1: the iteration goes on, as locally
    assert cpool_.map(square, range(3)) == [0, 1, 4]


def test_unpicklable_arguments_and_results_give_the_local_errors(cpool_, cluster):
    local = cpool.Pool(1)
    try:
        for p in (local, cpool_):
            with pytest.raises(TypeError, match="pickle"):
                p.map(square, [1, threading.Lock()])
            with pytest.raises(TypeError, match="pickle"):
                p.apply_async(square, (threading.Lock(),))
            with pytest.raises(mpool.MaybeEncodingError):
                p.map(_return_lock, range(2))
            with pytest.raises(mpool.MaybeEncodingError):
                p.apply(_return_lock, (1,))
            assert p.map(square, range(3)) == [0, 1, 4]
    finally:
        shutdown(local)


def _explode():
    raise ValueError("cannot be rebuilt here")


class _Unloadable:
    def __reduce__(self):
        return _explode, ()


def _return_unloadable(_):
    return _Unloadable()


def test_a_result_that_cannot_be_unpickled_gives_result_unpickling_error(cpool_):
    with pytest.raises(cpool.ResultUnpicklingError) as info:
        cpool_.apply(_return_unloadable, (1,))
    assert isinstance(info.value.__cause__, ValueError)
    assert cpool_.map(square, range(3)) == [0, 1, 4]


def test_bad_arguments_are_refused_and_the_pool_goes_on(cpool_, cluster):
    with pytest.raises(TypeError, match="scheduler address or a distributed.Client"):
        cpool.Pool(cluster=123)
    with pytest.raises(ValueError, match="task_timeout"):
        cpool.Pool(cluster=cluster, task_timeout=1)
    with pytest.raises(ValueError, match="max_memory_per_child"):
        cpool.Pool(cluster=cluster, max_memory_per_child=1 << 30)
    with pytest.raises(ValueError, match="at least 1"):
        cpool.Pool(0, cluster=cluster)
    with pytest.raises(ValueError, match="task_timeout"):
        cpool_.map(square, range(3), task_timeout=1)
    with pytest.raises(ValueError, match="Chunksize"):
        cpool_.imap(square, range(3), chunksize=0)
    with pytest.raises(TypeError, match="a cpool.Pool"):
        type("Mine", (cpool.Pool,), {})(cluster=cluster)
    assert cpool_.map(square, range(3)) == [0, 1, 4]


@pytest.mark.parametrize("make", [lambda: cpool.Value("i", 3), lambda: cpool.Array("d", 4),
                                  lambda: cpool.Lock(), lambda: cpool.RLock(),
                                  lambda: cpool.RawValue("i", 1)],
                         ids=["Value", "Array", "Lock", "RLock", "RawValue"])
def test_shared_memory_objects_are_refused(cpool_, make):
    obj = make()
    with pytest.raises(TypeError, match="shared only between processes of one machine"):
        cpool_.apply(repr, (obj,))
    with pytest.raises(TypeError, match="shared only between processes of one machine"):
        cpool_.starmap(max, [(1, obj)])
    with pytest.raises(TypeError, match="shared only between processes of one machine"):
        list(cpool_.imap(repr, [[obj]]))
    assert cpool_.map(square, range(3)) == [0, 1, 4]


# -- a large argument shared by many tasks goes once --

def _size_plus(blob, i):
    return len(blob) + i


def test_an_argument_shared_by_many_tasks_is_scattered_once(cpool_, monkeypatch):
    client = cpool_._core._client
    scattered, sent = [], []
    real_scatter, real_submit = client.scatter, client.submit

    def scatter(data, *a, **k):
        scattered.append(data)
        return real_scatter(data, *a, **k)

    def submit(func, *args, **k):
        sent.append(sum(len(a) for a in args if isinstance(a, bytes)))
        return real_submit(func, *args, **k)
    monkeypatch.setattr(client, "scatter", scatter)
    monkeypatch.setattr(client, "submit", submit)
    big = bytes(1 << 20)
    assert cpool_.starmap(_size_plus, [(big, i) for i in range(20)], chunksize=1) \
        == [len(big) + i for i in range(20)]
    assert len(scattered) == 1 and scattered[0] is big
    assert len(sent) == 20 and max(sent) < 10_000    # the key, not the MiB
    # imap's later batches use the same scattered copy
    del scattered[:]
    assert list(cpool_.imap(len, itertools.repeat(big, 30))) == [len(big)] * 30
    assert len(scattered) == 1
    # a small shared object is not worth a scatter
    del scattered[:]
    assert cpool_.starmap(_size_plus, [(b"x", i) for i in range(5)]) == [1, 2, 3, 4, 5]
    assert scattered == []


# -- life cycle --

def test_terminate_cancels_what_has_not_finished(fresh):
    p = fresh()
    slow = [p.apply_async(sleep_then, (2.0, i)) for i in range(4)]
    m = p.map_async(sleep_then, [1.5] * 4, chunksize=1)
    done = p.apply_async(square, (3,))
    time.sleep(0.2)
    t0 = time.monotonic()
    p.terminate()
    assert time.monotonic() - t0 < 5
    for r in slow + [m]:
        with pytest.raises(cpool.PoolTerminatedError):
            r.get(5)
    assert done.ready()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(square, (1,))
    p.join()


def test_close_join_waits_for_the_work(fresh):
    p = fresh(processes=1)     # one task in flight at a time
    rs = [p.apply_async(sleep_then, (0.1, i)) for i in range(6)]
    m = p.map_async(square, range(10))
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    p.join()
    assert [r.get(0) for r in rs] == list(range(6))
    assert m.get(0) == [x * x for x in range(10)]


def test_processes_bounds_the_tasks_in_flight(fresh, monkeypatch):
    p = fresh(processes=1)
    core = p._core
    most = []
    real = core._send

    def send(t):
        real(t)
        most.append(len(core._tasks))
    monkeypatch.setattr(core, "_send", send)
    assert p.map(square, range(8), chunksize=1) == [x * x for x in range(8)]
    assert most and max(most) == 1


def test_the_context_manager_terminates(cluster):
    with cpool.Pool(cluster=cluster) as p:
        assert p.map(square, range(3)) == [0, 1, 4]
    assert p._state == "TERMINATE"
    p.join()


def test_an_owned_client_from_an_address_is_closed_by_join(cluster):
    p = cpool.Pool(cluster=_ADDRESS[0])
    assert p.map(square, range(4)) == [0, 1, 4, 9]
    assert p.cluster is not cluster
    p.close()
    p.join()
    assert p.cluster.status == "closed"


# -- initializer --

_INIT_LOG = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cpool-cluster-init-{os.getpid()}")


def _init(path, tag):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.environ["CPOOL_TEST_TAG"] = tag


def _tagged(_):
    return os.getpid(), os.environ.get("CPOOL_TEST_TAG")


def _init_fails():
    raise OSError("no database")


def test_the_initializer_runs_once_per_worker_process_before_its_tasks(fresh, tmp_path):
    log = str(tmp_path / "init")
    p = fresh(initializer=_init, initargs=(log, "first"))
    got = p.map(_tagged, range(40), chunksize=1)
    assert {tag for _, tag in got} == {"first"}
    with open(log) as f:
        pids = [int(x) for x in f.read().split()]
    assert len(pids) == len(set(pids))              # once per process
    assert {pid for pid, _ in got} <= set(pids)     # before its tasks
    # a second pool runs its own initializer in the same processes
    q = fresh(initializer=_init, initargs=(log, "second"))
    assert {tag for _, tag in q.map(_tagged, range(20), chunksize=1)} == {"second"}


def test_an_initializer_that_raises_breaks_the_pool(fresh):
    p = fresh(initializer=_init_fails)
    r = p.map_async(square, range(10), chunksize=1)
    with pytest.raises(cpool.InitializerError) as info:
        r.get(T)
    assert isinstance(info.value.__cause__, OSError)
    assert isinstance(info.value.__cause__.__cause__, mpool.RemoteTraceback)
    with pytest.raises(cpool.InitializerError):
        p.apply_async(square, (1,))


# -- a Dask worker dies under a task --

def _second_run_answers(path):
    if os.path.exists(path):
        return "ran again"
    return report_pid_and_sleep(path)


def _kill_when_started(path):
    deadline = time.monotonic() + T
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    with open(path) as f:
        pid = int(f.read())
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_dask_worker_fails_its_task_with_worker_lost(cpool_, cluster, tmp_path):
    path = str(tmp_path / "pid")
    r = cpool_.apply_async(report_pid_and_sleep, (path,))
    pid = _kill_when_started(path)
    with pytest.raises(cpool.WorkerLostError, match="Dask worker"):
        r.get(T)
    assert pid not in cpool_.map(_worker_pid, range(4))    # the pool goes on
    assert cpool_.map(square, range(10)) == [x * x for x in range(10)]


def test_retries_run_the_task_again_after_its_worker_died(fresh, tmp_path):
    p = fresh(retries=1)
    path = str(tmp_path / "pid")
    r = p.apply_async(_second_run_answers, (path,))
    _kill_when_started(path)
    assert r.get(T) == "ran again"


# -- fresh interpreters: CPOOL_CLUSTER, imports --

def test_cpool_cluster_in_the_environment_scales_an_unmodified_program(cluster, tmp_path,
                                                                      monkeypatch):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""\
        import multiprocessing, sys

        def f(x):
            return x * x

        if __name__ == "__main__":
            with multiprocessing.Pool(2) as p:
                print(p.map(f, range(10)))
                print(sorted(p.imap_unordered(f, range(5))))
                print(p.apply(f, (7,)))
            print("on", type(p).__name__, file=sys.stderr)
        """))
    local = run_python(module="cpool", args=("run", str(script)), timeout=60)
    monkeypatch.setenv("CPOOL_CLUSTER", _ADDRESS[0])
    remote = run_python(module="cpool", args=("run", str(script)), timeout=60)
    assert local.returncode == 0 and remote.returncode == 0, (local.stderr, remote.stderr)
    assert remote.stdout == local.stdout
    assert "on Pool" in local.stderr and "on ClusterPool" in remote.stderr
    snippet = run_scenario("""
        import cpool
        p = cpool.Pool()
        print(type(p).__name__, p.map(abs, [-1, -2]))
        p.close(); p.join()
        """)
    assert snippet.split() == ["ClusterPool", "[1,", "2]"]


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_the_tutorial_programs_print_the_same_on_a_cluster(name, monkeypatch):
    script = TUTORIALS[name]
    local = run_python(script.replace("MODULE", "multiprocessing"), timeout=60)
    monkeypatch.setenv("CPOOL_CLUSTER", _ADDRESS[0])
    remote = run_python(script.replace("MODULE", "cpool") + textwrap.dedent("""
        import sys
        if __name__ == "__main__":
            print(sys.modules["cpool"].cluster.__name__, file=sys.stderr)
        """), timeout=60)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert local.stdout.strip() and remote.stdout == local.stdout
    assert "cpool.cluster" in remote.stderr     # (it did run on the cluster)


def test_a_local_pool_imports_nothing_of_dask():
    out = run_scenario("""
        import sys, cpool
        p = cpool.Pool(2)
        assert p.map(abs, [-1]) == [1]
        p.close(); p.join()
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] in ("dask", "distributed", "cpool.cluster")))
        """)
    assert out.strip() == "[]"


def test_without_distributed_cluster_raises_an_importerror_saying_how():
    out = run_scenario("""
        import sys
        sys.modules["distributed"] = None
        import cpool
        try:
            cpool.Pool(cluster="tcp://127.0.0.1:1")
        except ImportError as e:
            print(e)
        p = cpool.Pool(1)
        assert p.map(abs, [-3]) == [3]
        p.close(); p.join()
        """)
    assert "pip install cpool[cluster]" in out and "distributed" in out


# -- CPython's own _TestPool cases, against a cluster pool --

def _cluster_pool(*args, **kwargs):
    return cpool.Pool(*args, cluster=_ADDRESS[0], **kwargs)


# The cases that do not depend on local processes (pool._pool, process
# identity) or on CPython's pool internals.  Not test_async_timeout: it
# leaves a task sleeping 30 s on one of the two workers, and Dask may place
# a later small task behind it (its work stealing does not move tasks that
# short), so the next case would wait for it.  Not test_terminate: it
# terminates ten thousand time.sleep(300) tasks, and Dask cannot stop a task
# already running in a worker's thread (cancelled, it runs to its end): two
# of them would hold this cluster's two workers for five minutes.
_CPYTHON_CASES = [
    "test_apply", "test_async", "test_empty_iterable", "test_enter",
    "test_imap", "test_imap_handle_iterable_exception", "test_imap_unordered",
    "test_imap_unordered_handle_iterable_exception", "test_map", "test_map_async",
    "test_map_async_callbacks", "test_map_chunksize", "test_map_handle_iterable_exception",
    "test_map_no_failfast", "test_map_unplicklable", "test_starmap", "test_starmap_async",
    "test_traceback", "test_wrapped_exception", "test_context",
]


@pytest.fixture(scope="class")
def _cluster_for_cpython(cluster):
    yield


_mixin = type("CpoolClusterMixin", (tmp.ProcessesMixin,),
              {"Pool": staticmethod(_cluster_pool)})
_kept = {name: getattr(tmp._TestPool, name) for name in _CPYTHON_CASES}
_dropped = {name: None for name in dir(tmp._TestPool)
            if name.startswith("test_") and name not in _kept}
TestCPythonPoolOnCluster = pytest.mark.usefixtures("_cluster_for_cpython")(
    type("TestCPythonPoolOnCluster", (tmp._TestPool, _mixin, unittest.TestCase), _dropped))


def test_the_cpython_cases_ran_on_a_cluster_pool(cluster):
    assert set(_kept) <= set(dir(TestCPythonPoolOnCluster))
    p = TestCPythonPoolOnCluster.Pool(1)
    try:
        assert type(p).__name__ == "ClusterPool"
    finally:
        shutdown(p)
