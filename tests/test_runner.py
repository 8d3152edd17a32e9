"""Programs run unmodified on cpool: ``python -m cpool run`` and cpool.install().

Each test writes a small program that knows nothing of cpool, runs it with
plain ``python`` and with ``python -m cpool run`` (fresh interpreters, under
a time limit), and compares: the same output, exit status and traceback,
but under the runner the pools were cpool's.  The programs show what ran:
the pool's class's module, the threads alive while the pool works
(multiprocessing's pool runs handler threads whose targets are
``Pool._handle_workers`` and so on, its executor an ``_ExecutorManagerThread``)
and how many ``multiprocessing.connection.Pipe``s were made (a probe the
program puts in).  Plain python shows the standard library's machinery,
which proves the probe sees it; under the runner none of it may appear.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT, python_env, run_python

PROBE = """\
import sys, threading
import multiprocessing, multiprocessing.pool, multiprocessing.connection
import concurrent.futures, concurrent.futures.process
pipes = []
_Pipe = multiprocessing.connection.Pipe
def Pipe(*args, **kwargs):
    pipes.append(1)
    return _Pipe(*args, **kwargs)
multiprocessing.connection.Pipe = Pipe

def machinery(pool):
    threads = sorted(f"{type(t).__name__}:{getattr(getattr(t, '_target', None), '__name__', '')}"
                     for t in threading.enumerate() if t is not threading.main_thread())
    return f"machinery: {type(pool).__module__} {threads} pipes={len(pipes)}"
"""

PROGRAM = PROBE + """
def square(x):
    return x * x

if __name__ == "__main__":
    {setup}
    pool = {make}
    with pool:
        print(list(pool.map(square, range(10))))
        print(sorted(pool.map(square, [3, 1, 2])))
        print("isinstance:", isinstance(pool, {base}))
        shown = machinery(pool)
    {after}
    print(shown)
"""

POOL_BASE = "multiprocessing.pool.Pool"
EXECUTOR_BASE = "concurrent.futures.ProcessPoolExecutor"
START = 'print("start method:", pool._ctx.get_start_method())'

# name: (setup line, the expression that makes the pool, its base, a line after)
NAMES = {
    "multiprocessing.Pool": ("", "multiprocessing.Pool(2)", POOL_BASE, START),
    "multiprocessing.pool.Pool": ("", "multiprocessing.pool.Pool(processes=2)", POOL_BASE,
                                  START),
    "from multiprocessing.pool import Pool": (
        "from multiprocessing.pool import Pool", "Pool(2, None, (), None, None)", POOL_BASE,
        START),
    "get_context().Pool": ("", "multiprocessing.get_context().Pool(2)", POOL_BASE, START),
    "fork context": ("", 'multiprocessing.get_context("fork").Pool(2)', POOL_BASE, START),
    "spawn context": ("", 'multiprocessing.get_context("spawn").Pool(2)', POOL_BASE, START),
    "forkserver context": ("", 'multiprocessing.get_context("forkserver").Pool(2)', POOL_BASE,
                           START),
    # The start method the program chose is the one its pools get.
    "set_start_method then Pool": ('multiprocessing.set_start_method("spawn")',
                                   "multiprocessing.Pool(2)", POOL_BASE, START),
    "set_start_method then pool.Pool": ('multiprocessing.set_start_method("forkserver")',
                                        "multiprocessing.pool.Pool(2)", POOL_BASE, START),
    "concurrent.futures.ProcessPoolExecutor": (
        "", "concurrent.futures.ProcessPoolExecutor(2)", EXECUTOR_BASE, ""),
    "concurrent.futures.process.ProcessPoolExecutor": (
        "from concurrent.futures.process import ProcessPoolExecutor",
        "ProcessPoolExecutor(max_workers=2)", EXECUTOR_BASE, ""),
    "set_start_method then ProcessPoolExecutor": (
        'multiprocessing.set_start_method("spawn")',
        "concurrent.futures.ProcessPoolExecutor(2)", EXECUTOR_BASE,
        'print("start method:", pool._mp_context.get_start_method())'),
}


def program(name):
    setup, make, base, after = NAMES[name]
    return (PROGRAM.replace("{setup}", setup or "pass").replace("{make}", make)
            .replace("{base}", base).replace("{after}", after or "pass"))


def runner(*args, cwd=None, timeout=60):
    """python -m cpool run ARGS."""
    return run_python(module="cpool", args=["run", *args], cwd=cwd, timeout=timeout)


def both(tmp_path, source, args=(), name="prog.py"):
    """(plain python's CompletedProcess, the runner's) for the script
    `source`, run from tmp_path with `args`."""
    script = tmp_path / name
    plain = run_python(source, script=script, args=args, cwd=tmp_path)
    ours = runner(script, *args, cwd=tmp_path)
    return plain, ours


def split_machinery(out):
    """(the output before the machinery line, the machinery line)."""
    lines = out.splitlines()
    assert lines and lines[-1].startswith("machinery: "), out
    return lines[:-1], lines[-1]


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("name", list(NAMES))
def test_each_name_runs_on_cpool(tmp_path, name):
    plain, ours = both(tmp_path, program(name))
    plain_out, plain_machinery = split_machinery(ok(plain))
    ours_out, ours_machinery = split_machinery(ok(ours))
    assert ours_out == plain_out
    assert "isinstance: True" in ours_out
    assert ours.stderr == plain.stderr == ""
    executor = NAMES[name][2] == EXECUTOR_BASE
    # Plain python ran the standard library's machinery: the probe sees it.
    if executor:
        assert plain_machinery.startswith("machinery: concurrent.futures.process ")
        assert "_ExecutorManagerThread" in plain_machinery
    else:
        assert plain_machinery.startswith("machinery: multiprocessing.pool ")
        assert ":_handle_workers" in plain_machinery
    assert "pipes=0" not in plain_machinery
    # The runner ran cpool's: none of it.
    assert ours_machinery.startswith("machinery: cpool."), ours_machinery
    assert "_handle_" not in ours_machinery and "_ExecutorManager" not in ours_machinery
    assert ours_machinery.endswith("pipes=0"), ours_machinery


GLOBALS = """\
import sys, __main__
print(sys.argv)
print(__name__, globals().get("__file__"), __package__, getattr(__spec__, "name", None))
print(globals().get("__cached__"), getattr(__loader__, "__name__", type(__loader__).__name__))
print(sorted(vars(__main__)), __main__ is sys.modules["__main__"])
print(sys.path[0])
"""


def test_a_script_sees_what_python_gives_it(tmp_path):
    args = ["a b", "--n", "100", "-m", "run", "--help"]
    plain, ours = both(tmp_path, GLOBALS, args)
    assert ok(ours) == ok(plain)
    assert repr(args)[1:] in ours.stdout
    assert str(tmp_path) in ours.stdout.splitlines()[-1]


def test_a_relative_script_and_a_symlink(tmp_path, monkeypatch):
    """sys.argv[0] as given; sys.path[0] the real directory of the script."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "prog.py").write_text(GLOBALS)
    (tmp_path / "link.py").symlink_to(tmp_path / "real" / "prog.py")
    monkeypatch.chdir(tmp_path)
    for path in ("real/prog.py", "link.py"):
        plain = run_python(GLOBALS, script=path, args=["x"], cwd=tmp_path)
        ours = runner(path, "x", cwd=tmp_path)
        assert ok(ours) == ok(plain)
        assert ours.stdout.splitlines()[-1] == str(tmp_path / "real")


MODULE = """\
import sys, __main__, multiprocessing
def square(x):
    return x * x
if __name__ == "__main__":
    print(sys.argv[1:], __name__, __spec__.name, __package__, __file__ == sys.argv[0])
    print(sorted(vars(__main__)), sys.path[0])
    with multiprocessing.get_context({method!r}).Pool(2) as pool:
        print(pool.map(square, range(5)), type(pool).__module__.split(".")[0])
"""


# spawn and forkserver find the main module again by its name (functions of
# __main__ travel by reference); python -m pkg (pkg/__main__.py) is fork's:
# multiprocessing's spawned children do not load a package's __main__.
@pytest.mark.parametrize("target, method", [("mod", "spawn"), ("pkg.mod", "forkserver"),
                                            ("pkg", "fork")])
def test_dash_m(tmp_path, target, method):
    """-m module, as python -m: sys.argv, __name__, __spec__, sys.path[0]."""
    source = MODULE.format(method=method)
    (tmp_path / "mod.py").write_text(source)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(source)
    (tmp_path / "pkg" / "__main__.py").write_text(source)
    plain = run_python(module=target, args=["-x", "y"], cwd=tmp_path)
    ours = runner("-m", target, "-x", "y", cwd=tmp_path)
    assert ok(plain).endswith(" multiprocessing\n")
    assert ok(ours).endswith(" cpool\n")
    assert ours.stdout.replace(" cpool\n", " multiprocessing\n") == plain.stdout
    assert "['-x', 'y'] __main__" in ours.stdout


def test_a_directory_and_dash_c(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text(GLOBALS)
    plain = subprocess.run([sys.executable, "app", "1"], cwd=tmp_path, env=python_env(),
                           capture_output=True, text=True, timeout=60)
    ours = runner("app", "1", cwd=tmp_path)
    assert ok(ours) == ok(plain)
    plain = run_python(GLOBALS, args=["1", "-c"], cwd=tmp_path)
    ours = runner("-c", textwrap.dedent(GLOBALS), "1", "-c", cwd=tmp_path)
    assert ok(ours) == ok(plain)
    assert ours.stdout.startswith("['-c', '1', '-c']\n")


# Endings: the exit status, stdout and stderr (tracebacks included) must be
# python's own, to the byte.
ENDINGS = {
    "uncaught exception": """
        def f():
            raise ValueError("boom")
        f()
    """,
    "SystemExit(3)": "raise SystemExit(3)",
    "sys.exit(message)": 'import sys; sys.exit("bye")',
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "SIGTERM": "import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)",
    "a signal handler": """
        import os, signal
        signal.signal(signal.SIGUSR1, lambda *a: print("handled"))
        os.kill(os.getpid(), signal.SIGUSR1)
    """,
    "a syntax error": "def f(:\n    pass\n",
    "an exception chained": """
        try:
            {}["k"]
        except KeyError as e:
            raise RuntimeError("while looking") from e
    """,
    "a program's excepthook": """
        import sys, traceback
        def hook(t, v, tb):
            print("hook:", t.__name__, [f.name for f in traceback.extract_tb(tb)])
        sys.excepthook = hook
        def g():
            raise OSError("x")
        g()
    """,
    "atexit after the traceback": """
        import atexit
        atexit.register(print, "atexit ran")
        raise LookupError
    """,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_endings_are_pythons(tmp_path, ending):
    # A pool used first: its end (atexit, the collector thread) must not
    # change how the program ends.
    source = ("import multiprocessing\nwith multiprocessing.Pool(2) as p:\n"
              "    print(p.map(abs, [-1, -2]))\n" + textwrap.dedent(ENDINGS[ending]))
    if ending == "a syntax error":
        source = ENDINGS[ending]
    plain, ours = both(tmp_path, source)
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        plain.returncode, plain.stdout, plain.stderr)
    expected = {"uncaught exception": 1, "SystemExit(3)": 3, "sys.exit(message)": 1,
                "KeyboardInterrupt": -signal.SIGINT, "SIGTERM": -signal.SIGTERM,
                "a syntax error": 1}
    assert ours.returncode == expected.get(ending, 0 if ending == "a signal handler" else 1)


def test_an_uncaught_exception_under_dash_m(tmp_path):
    """python -m shows runpy's frames; the runner shows those, not its own."""
    (tmp_path / "failing.py").write_text("def f():\n    1 / 0\nf()\n")
    plain = run_python(module="failing", cwd=tmp_path)
    ours = runner("-m", "failing", cwd=tmp_path)
    assert (ours.returncode, ours.stderr) == (plain.returncode, plain.stderr) == (
        1, plain.stderr)
    assert "ZeroDivisionError" in ours.stderr and "cpool" not in ours.stderr


def test_an_error_of_a_task_is_the_same_error(tmp_path):
    source = """\
        import multiprocessing
        def f(x):
            raise ValueError(f"bad {x}")
        if __name__ == "__main__":
            with multiprocessing.Pool(2) as p:
                p.apply(f, (7,))
    """
    plain, ours = both(tmp_path, textwrap.dedent(source))
    assert plain.returncode == ours.returncode == 1
    assert plain.stderr.splitlines()[-1] == ours.stderr.splitlines()[-1] == "ValueError: bad 7"
    assert "multiprocessing/pool.py" not in ours.stderr


def test_threadpool_and_a_programs_own_subclass_stay_the_stdlibs(tmp_path):
    source = PROBE + """
class Mine(multiprocessing.pool.Pool):
    pass
if __name__ == "__main__":
    with multiprocessing.pool.ThreadPool(2) as t:
        print(type(t).__module__, isinstance(t, multiprocessing.pool.Pool), t.map(abs, [-1]))
    with Mine(1) as m:
        print(type(m).__mro__[1].__module__, m.apply(abs, (-2,)))
    with multiprocessing.Pool(1) as p:
        print(p.apply(abs, (-3,)), isinstance(p, Mine))
        print(machinery(p))
"""
    plain, ours = both(tmp_path, source)
    plain_out, _ = split_machinery(ok(plain))
    ours_out, machinery = split_machinery(ok(ours))
    assert ours_out == plain_out == ["multiprocessing.pool True [1]",
                                     "multiprocessing.pool 2", "3 False"]
    assert machinery.startswith("machinery: cpool.pool ")


CHILDREN = PROBE + """
import os, subprocess
def made(q=None):
    p = multiprocessing.Pool(1)
    kind = type(p).__module__
    p.terminate()
    if q is None:
        return kind
    q.put(kind)
if __name__ == "__main__":
    for method in ("spawn", "forkserver", "fork"):
        ctx = multiprocessing.get_context(method)
        q = ctx.Queue()
        child = ctx.Process(target=made, args=(q,))
        child.start()
        print("Process", method, q.get())
        child.join()
    for method in ("spawn", "fork"):
        ctx = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            print("executor", method, ex.submit(made).result())
    out = subprocess.run([sys.executable, "-c", "import multiprocessing as m; "
                          "p = m.Pool(1); print(type(p).__module__); p.terminate()"],
                         capture_output=True, text=True)
    print("python again", out.stdout.strip(), out.stderr)
"""


def test_children_see_the_same_replacement(tmp_path):
    """Processes the program starts (spawn, forkserver, fork) and the
    workers of its pools make cpool's pools too: the spawn preparation data
    carries install() (no file is installed: this cpool comes from
    PYTHONPATH); python run again does not (that is the .pth's, below)."""
    plain, ours = both(tmp_path, CHILDREN)
    assert "cpool" not in ok(plain)
    lines = ok(ours).splitlines()
    assert lines[:5] == ["Process spawn cpool.pool", "Process forkserver cpool.pool",
                         "Process fork cpool.pool", "executor spawn cpool.pool",
                         "executor fork cpool.pool"]
    assert lines[5] == "python again multiprocessing.pool ", lines[5]
    assert ours.stderr == ""


def test_the_pth_file_installs_in_python_run_again(tmp_path):
    """cpool-install.pth, in the site-packages of an interpreter (a venv
    here, as pip would put it there): python started by a program under the
    runner (CPOOL_INSTALL=1) makes cpool's pools; without the variable the
    .pth changes nothing."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    shutil.copy(os.path.join(REPO_ROOT, "cpool-install.pth"), site)
    (tmp_path / "prog.py").write_text(CHILDREN)
    env = python_env()
    env.pop("CPOOL_INSTALL", None)

    def run(*argv):
        p = subprocess.run([python, *argv], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120, start_new_session=True)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout.splitlines()[-1]
    assert run("-m", "cpool", "run", "prog.py") == "python again cpool.pool "
    assert run("prog.py") == "python again multiprocessing.pool "
    probe = "import sys; print('cpool' in sys.modules)"
    assert run("-c", probe) == "False"   # the .pth imports nothing unless asked


def test_setup_puts_the_pth_file_at_the_top_of_the_build(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                           str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "cpool-install.pth") as f:
        line = f.read()
    assert line.startswith("import ") and "CPOOL_INSTALL" in line and line.count("\n") == 1


INSTALL = PROBE + """
from multiprocessing import Pool                 # names taken before install()
from multiprocessing.pool import Pool as PoolClass
from concurrent.futures import ProcessPoolExecutor
import cpool

def square(x):
    return x * x

if __name__ == "__main__":
    cpool.install()
    cpool.install()                              # twice: the same
    for make in (lambda: Pool(2), lambda: PoolClass(2), lambda: multiprocessing.Pool(2),
                 lambda: multiprocessing.get_context("spawn").Pool(1)):
        with make() as p:
            print(type(p).__module__, p.map(square, range(4)),
                  isinstance(p, multiprocessing.pool.Pool))
    with ProcessPoolExecutor(2) as ex:
        print(type(ex).__module__, list(ex.map(square, range(3))),
              isinstance(ex, concurrent.futures.ProcessPoolExecutor))
        shown = machinery(ex)
        print("the stdlib's machinery:", "_ExecutorManager" in shown or "_handle" in shown,
              shown.split()[1], shown.split()[-1])
    with multiprocessing.pool.ThreadPool(2) as t:     # (its queues make pipes)
        print("thread pool", type(t).__module__, t.map(square, [5]))
    cpool.uninstall()
    cpool.uninstall()
    with Pool(2) as p:
        print("after", type(p).__module__, p.map(square, range(4)))
    with multiprocessing.pool.ThreadPool(2) as t:
        print("thread pool", type(t).__module__, t.map(square, [5]))
    with ProcessPoolExecutor(2) as ex:
        print("after", type(ex).__module__, list(ex.map(square, range(3))))
    cpool.install()
    with multiprocessing.Pool(1) as p:
        print("again", type(p).__module__)
"""


def test_install_from_code(tmp_path):
    out = ok(run_python(INSTALL, script=tmp_path / "prog.py", cwd=tmp_path))
    assert out.splitlines() == [
        "cpool.pool [0, 1, 4, 9] True",
        "cpool.pool [0, 1, 4, 9] True",
        "cpool.pool [0, 1, 4, 9] True",
        "cpool.pool [0, 1, 4, 9] True",
        "cpool.futures [0, 1, 4] True",
        "the stdlib's machinery: False cpool.futures pipes=0",
        "thread pool multiprocessing.pool [25]",
        "after multiprocessing.pool [0, 1, 4, 9]",
        "thread pool multiprocessing.pool [25]",
        "after concurrent.futures.process [0, 1, 4]",
        "again cpool.pool",
    ]


@pytest.mark.parametrize("argv, message", [
    ([], "no program given"),
    (["-m"], "argument expected for the -m option"),
    (["-c"], "argument expected for the -c option"),
    (["--frobnicate", "x.py"], "unknown option '--frobnicate'"),
    (["missing.py"], "can't open file "),
])
def test_bad_command_lines(tmp_path, argv, message):
    proc = runner(*argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    if argv == ["missing.py"]:
        assert repr(str(tmp_path / "missing.py")) in proc.stderr
    else:
        assert "usage: python -m cpool run" in proc.stderr


def test_a_missing_module_is_pythons_error(tmp_path):
    plain = run_python(module="no_such_module_here", cwd=tmp_path)
    ours = runner("-m", "no_such_module_here", cwd=tmp_path)
    assert (ours.returncode, ours.stderr) == (plain.returncode, plain.stderr) == (
        1, f"{sys.executable}: No module named no_such_module_here\n")


def test_help_and_the_demonstration_still_run(tmp_path):
    proc = runner("--help", cwd=tmp_path)
    assert ok(proc).startswith("usage: python -m cpool run")
    demo = run_python(module="cpool", args=["--n", "100", "--processes", "2"], cwd=tmp_path,
                      timeout=120)
    assert "ratio (multiprocessing time / cpool time)" in ok(demo)
    assert "multiprocessing.Pool" in demo.stdout and "MISMATCH" not in demo.stdout
