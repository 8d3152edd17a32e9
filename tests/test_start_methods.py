"""The start methods of cpool.Pool: "fork" forks the template from the
parent; "spawn" and "forkserver" exec a fresh interpreter as the template.
Scenarios that could hang run in a fresh interpreter under a time limit;
those that need the main module to be importable by the template (spawn's
``if __name__ == "__main__"`` rules) run as script files."""
import os
import signal
import sys
import time

import pytest

import cpool
from conftest import read_line, run_python, shutdown, start_python
from procs import cmdline, shm_names, wait_not_running

EXEC_METHODS = ("spawn", "forkserver")


def square(x):
    return x * x


def ppid(_=None):
    return os.getppid()


def run_script(tmp_path, source, timeout=60, args=()):
    """Run `source` as a script file (its functions importable by a spawned
    template, as multiprocessing requires); CompletedProcess.  A script
    that outlives `timeout` has its process group killed and fails."""
    return run_python(source, timeout, cwd=str(tmp_path), args=args,
                      script=tmp_path / "script.py")


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_the_template_is_a_fresh_interpreter_that_forks_the_workers(method):
    p = cpool.Pool(2, context=method)
    try:
        tmpl = p._core.template_pid
        assert p.map(ppid, range(8), chunksize=1) == [tmpl] * 8
        argv = cmdline(tmpl)
        assert argv[0] == os.fsencode(sys.executable) and b"--cpool-template" in argv
        for w in p._pool:                # forked from the template: same command line
            assert cmdline(w.pid) == argv
    finally:
        shutdown(p)
    fork = cpool.Pool(1)
    try:
        assert b"--cpool-template" not in cmdline(fork._core.template_pid)
    finally:
        shutdown(fork)


def test_the_issue_6_scenario_threads_logging_forkserver_maxtasksperchild(tmp_path):
    # The parent runs threads that log (and so hold the logging locks) from
    # before Pool() on: a template forked then could inherit a held lock and
    # every worker with it; an exec'ed one cannot.  20 maps, workers replaced
    # every 2 tasks, no deadlock, and no fork-with-threads warning.
    r = run_script(tmp_path, """
        import io, logging, threading, warnings, cpool
        log = logging.getLogger("busy")
        log.addHandler(logging.StreamHandler(io.StringIO()))
        log.setLevel(logging.INFO)
        def task(x):
            log.info("in worker %s", x)
            return x + 1
        def chatter(stop):
            while not stop.is_set():
                log.info("parent thread busy")
        if __name__ == "__main__":
            stop = threading.Event()
            threads = [threading.Thread(target=chatter, args=(stop,)) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pool = cpool.Pool(2, maxtasksperchild=2, context="forkserver")
                pids = set()
                for i in range(20):
                    assert pool.map_async(task, range(8), chunksize=1).get(timeout=30) \\
                        == list(range(1, 9))
                    pids.update(w.pid for w in pool._pool)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            pool.close(); pool.join()
            print("ok", len(pids) > 2, [str(w.message) for w in caught])
    """, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "ok True []"


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_main_module_functions_travel_by_reference(tmp_path, method):
    r = run_script(tmp_path, f"""
        import cpool
        def cube(x):
            return x ** 3
        def init(tag):
            global TAG
            TAG = tag
        def tagged(x):
            return TAG, __name__
        if __name__ == "__main__":
            with cpool.Pool(2, context={method!r}, initializer=init, initargs=("t",)) as p:
                print(p.map(cube, range(4)), p.apply(tagged, (0,)))
            p.join()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 1, 8, 27] ('t', '__mp_main__')"


def test_a_pool_made_while_the_main_module_is_imported_breaks_with_the_reason(tmp_path):
    # No __main__ guard: the template imports the main module, which makes a
    # pool again.  multiprocessing raises "bootstrapping phase" there (and
    # its Pool respawns failing workers forever); cpool's pool breaks with it.
    r = run_script(tmp_path, """
        import cpool
        pool = cpool.Pool(2, context="spawn")
        if __name__ == "__main__":
            try:
                pool.apply_async(abs, (-1,)).get(timeout=20)
            except cpool.InitializerError as e:
                print("broken:", "bootstrapping phase" in str(e.__cause__.__cause__))
            pool.terminate(); pool.join()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "broken: True"


def test_an_initializer_the_template_cannot_find_breaks_the_pool():
    # Defined in the __main__ of `python -c`: the template has no main module
    # to find it in.  multiprocessing's workers would fail and be respawned
    # forever; cpool's pool is broken, naming why, and every call says so.
    # (Without cloudpickle: with it, such an initializer goes by value.)
    r = run_python("""
        import sys
        sys.modules["cloudpickle"] = None
        import cpool
        def init():
            pass
        pool = cpool.Pool(2, initializer=init, context="spawn")
        for _ in range(2):
            try:
                pool.apply_async(abs, (-1,)).get(timeout=20)
            except cpool.InitializerError as e:
                print(type(e.__cause__).__name__, "init" in str(e.__cause__))
        print([w.pid for w in pool._pool])
        pool.terminate(); pool.join()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["RuntimeError True"] * 2 + ["[None, None]"]


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_a_multiprocessing_queue_in_initargs_reaches_the_workers(tmp_path, method):
    # Its pipe travels as multiprocessing's spawn passes descriptors.
    r = run_script(tmp_path, f"""
        import multiprocessing, os, cpool
        def init(q):
            global Q
            Q = q
        def report(x):
            Q.put((x, os.getpid()))
            return x
        if __name__ == "__main__":
            q = multiprocessing.get_context({method!r}).Queue()
            with cpool.Pool(2, initializer=init, initargs=(q,), context={method!r}) as p:
                assert p.map(report, range(6), chunksize=1) == list(range(6))
                got = sorted(q.get(timeout=20) for _ in range(6))
            p.join()
            print([x for x, _ in got], os.getpid() not in {{pid for _, pid in got}})
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 1, 2, 3, 4, 5] True"


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_parent_killed_takes_the_exec_template_and_workers(tmp_path, method):
    p = start_python(f"""
        import time, cpool
        def slow(x):
            time.sleep(60)
        if __name__ == "__main__":
            pool = cpool.Pool(2, context={method!r})
            pool.map_async(slow, range(4))
            print(pool._core.template_pid, *[w.pid for w in pool._pool], flush=True)
            time.sleep(60)
    """, cwd=str(tmp_path), script=tmp_path / "script.py")
    before = set(shm_names())
    try:
        pids = [int(x) for x in read_line(p).split()]
        assert len(pids) == 3
    finally:
        p.kill()
        p.communicate(timeout=10)
    assert wait_not_running(pids, 2) == set()
    assert set(shm_names()) - before == set()


def test_no_process_or_fd_left_by_exec_templates(tmp_path):
    r = run_script(tmp_path, """
        import gc, os, cpool
        from procs import children
        def inc(x):
            return x + 1
        if __name__ == "__main__":
            warm = cpool.Pool(1, context="spawn"); warm.map(inc, range(2))
            warm.close(); warm.join()
            fds, kids = len(os.listdir("/proc/self/fd")), len(children())  # + resource tracker
            for i in range(6):
                pool = cpool.Pool(2, context=("spawn", "forkserver")[i % 2])
                assert pool.map(inc, range(20)) == list(range(1, 21))
                (pool.close if i % 3 else pool.terminate)()
                pool.join()
            del pool; gc.collect()
            print(len(os.listdir("/proc/self/fd")) - fds, len(children()) - kids)
    """, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]


# -- os.fork()'s DeprecationWarning about threads ------------------------------

def test_fork_warns_as_os_fork_does_when_the_parent_runs_threads():
    # In a fresh interpreter: pytest's own process runs threads already.
    r = run_python("""
        import os, sys, threading, warnings, cpool
        def made(method):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = cpool.Pool(1, context=method)
            p.terminate(); p.join()
            return [(w.category.__name__, str(w.message), os.path.basename(w.filename))
                    for w in caught]
        def forked():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
            return [(w.category.__name__, str(w.message)) for w in caught]
        alone = made("fork")
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()
        print(repr((alone, made("fork"), forked(), made("spawn"), made("forkserver"))))
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # swallowed, as os.fork swallows it
            p = cpool.Pool(1); p.terminate(); p.join()
        stop.set(); t.join()
    """)
    assert r.returncode == 0, r.stderr
    alone, forked_pool, os_fork, spawned, forkserver = eval(r.stdout)
    assert alone == spawned == forkserver == []
    if sys.version_info >= (3, 12):
        assert [(c, m.replace(str(m.split("pid=")[1].split(")")[0]), "PID"))
                for c, m in os_fork] == \
            [("DeprecationWarning", "This process (pid=PID) is multi-threaded, use of "
              "fork() may lead to deadlocks in the child.")]
        assert [(c, m) for c, m, _ in forked_pool] == os_fork   # same pid, same words
        assert forked_pool[0][2] == "pool.py"   # like os.fork's: where cpool forks
    else:
        assert os_fork == forked_pool == []


def test_fork_hooks_run_as_after_one_os_fork_at_pool_time(tmp_path):
    # A forked template runs no Python: os.register_at_fork's before and
    # after_in_parent hooks run once, in the parent, when Pool() forks it;
    # after_in_child once in each worker, first or replacement (each is what
    # an os.fork() at Pool() would have made), never in the template.
    log = tmp_path / "hooks.log"
    r = run_python(f"""
        import os, cpool
        fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        def note(what):
            return lambda: os.write(fd, b"%s %d\\n" % (what, os.getpid()))
        os.register_at_fork(before=note(b"before"), after_in_parent=note(b"parent"),
                            after_in_child=note(b"child"))
        pool = cpool.Pool(2, maxtasksperchild=1)
        ran = [pool.apply(os.getpid) for _ in range(6)]
        template = pool._core.template_pid
        pool.close(); pool.join()
        print(os.getpid(), template, *ran)
    """)
    assert r.returncode == 0, r.stderr
    parent, template, *ran = map(int, r.stdout.split())
    lines = [line.split() for line in log.read_text().splitlines()]
    hooks = [(what, int(pid)) for what, pid in lines]
    assert [h for h in hooks if h[0] != "child"] == [("before", parent), ("parent", parent)]
    children = [pid for what, pid in hooks if what == "child"]
    assert template not in children and parent not in children
    assert len(children) == len(set(children))      # once in each worker
    assert len(set(ran)) == 6 and set(ran) <= set(children)   # each task a new worker


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_ctrl_c_while_the_template_boots_is_not_its_business(method):
    # A Ctrl-C goes to the whole process group; the parent owns it.  The
    # exec'ed template starts with SIGINT blocked, then ignores it: one that
    # lands while its interpreter boots must not kill it.
    p = cpool.Pool(2, context=method)
    try:
        for _ in range(3):
            os.kill(p._core.template_pid, signal.SIGINT)
            time.sleep(0.01)
        assert p.map(square, range(10)) == [square(i) for i in range(10)]
        os.kill(p._core.template_pid, signal.SIGINT)   # and once it runs its loop
        assert p.apply(square, (7,)) == 49
    finally:
        shutdown(p)


@pytest.mark.parametrize("method", [None, "fork", "spawn", "forkserver"])
def test_get_context_gives_cpool_pools_and_multiprocessing_the_rest(method):
    import multiprocessing
    ctx = cpool.get_context(method)
    assert ctx.get_start_method() == multiprocessing.get_context(method).get_start_method()
    assert ctx.Process is multiprocessing.get_context(method).Process
    assert ctx.Value is cpool.Value and ctx.Lock is cpool.Lock
    with ctx.Pool(1) as p:
        assert isinstance(p, cpool.Pool)
        assert p._start_method == (method or "fork")
        assert p.apply(abs, (-3,)) == 3
    assert ctx.get_context("spawn").get_start_method() == "spawn"
