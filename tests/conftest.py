"""Shared fixtures and helpers of cpool's tests.

* ``hang_guard`` (autouse): faulthandler dumps every thread's stack and exits
  the test process if one test (with its fixtures) runs for over a minute, so
  a hang is a loud failure, never a blocked run.  While ``run_python`` waits,
  the guard waits longer than the snippet's own timeout, which fails the test
  by name.
* ``pool``: a running cpool.Pool(4) (or ``Pool(**request.param)`` when
  parametrized indirectly, as ``each_start_method()`` does), terminated and
  joined in teardown; a join that does not finish within JOIN_TIMEOUT
  seconds fails the test.
* ``run_python(source, timeout=60)``: the one way the tests run a fresh
  interpreter: a Python snippet (or, with ``script=``, a script file; with
  ``module=``, ``python -m``), with PYTHONPATH = the repository root, so
  ``import cpool`` works from any cwd, and this folder, for ``procs``; it
  returns the CompletedProcess; a snippet that outlives its timeout has its
  whole process group killed and fails the test.  Its output is text with
  newlines translated (a lone carriage return too) unless ``keep_cr=True``
  (for a test of what is drawn with carriage returns).  ``start_python`` starts
  one the same way and returns the Popen, for a test that talks to it or
  kills it; ``run_scenario`` is run_python for a scenario that must exit 0,
  and returns its stdout.
* ``run_threads(target, argss, timeout)``: target(*args) for each args, each
  in a thread of its own, all at once; a thread still running after the
  timeout fails the test.
"""
import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import cpool

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
HANG_TIMEOUT = 60
JOIN_TIMEOUT = 30
# cpool.Pool's start methods: the template forked, or a fresh interpreter.
START_METHODS = ("fork", "spawn", "forkserver")


def each_start_method(processes=4):
    """Parametrize the ``pool`` fixture over the start methods."""
    return pytest.mark.parametrize(
        "pool", [{"processes": processes, "context": m} for m in START_METHODS],
        indirect=True, ids=START_METHODS)


# Where a hang's stacks go: the terminal's stderr, saved before pytest
# captures it for the tests.  faulthandler exits the process right after the
# dump, so a dump into pytest's capture file would be lost with it.
_hang_out = None


def pytest_configure(config):
    global _hang_out
    _hang_out = os.fdopen(os.dup(2), "w")


def pytest_unconfigure(config):
    global _hang_out
    faulthandler.cancel_dump_traceback_later()
    if _hang_out is not None:
        _hang_out.close()
        _hang_out = None


def arm_hang_guard(seconds):
    """Dump every thread's stack and exit the test process in `seconds`."""
    faulthandler.dump_traceback_later(seconds, exit=True,
                                      file=_hang_out or sys.__stderr__)


@pytest.fixture(autouse=True)
def hang_guard():
    arm_hang_guard(HANG_TIMEOUT)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class _JoinTimeout(BaseException):
    pass


def join_within(pool, timeout=JOIN_TIMEOUT):
    """pool.join() in the calling (main) thread: True if it returned within
    `timeout` seconds.  A timer thread interrupts a join that takes longer
    with SIGUSR2, whose handler raises in the main thread (cpool's join
    checks for signals while it waits; one that does not is caught by the
    hang guard).  SIGALRM is left alone: pytest-timeout may be using it."""
    joining = [True]

    def on_signal(signum, frame):
        if joining[0]:
            raise _JoinTimeout

    main = threading.get_ident()
    old = signal.signal(signal.SIGUSR2, on_signal)
    timer = threading.Timer(timeout, signal.pthread_kill, (main, signal.SIGUSR2))
    timer.daemon = True
    timer.start()
    try:
        pool.join()
        joining[0] = False
    except _JoinTimeout:
        return False
    finally:
        joining[0] = False
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR2, old)
    return True


def shutdown(pool, timeout=JOIN_TIMEOUT):
    """terminate() then join(); fail the test if join hangs."""
    pool.terminate()
    if not join_within(pool, timeout):
        pytest.fail(f"{pool!r}.join() did not return within {timeout} s "
                    f"after terminate()")


def module_pool(processes):
    """A module-scoped fixture: one pool of `processes` workers for the
    module's tests, shut down (with a time limit) after the last."""
    @pytest.fixture(scope="module")
    def fixture():
        p = cpool.Pool(processes)
        yield p
        shutdown(p)
    return fixture


@pytest.fixture
def pool(request):
    kwargs = getattr(request, "param", None) or {"processes": 4}
    p = cpool.Pool(**kwargs)
    try:
        yield p
    finally:
        shutdown(p)


def run_threads(target, argss, timeout):
    threads = [threading.Thread(target=target, args=args) for args in argss]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"


def python_env():
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, TESTS_DIR] + ([old] if old else []))
    env.pop("CPOOL_DEBUG", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def start_python(source=None, args=(), cwd=None, script=None, module=None,
                 new_session=True, keep_cr=False):
    """Start a fresh interpreter (environment: python_env(); stdin
    /dev/null; text pipes for stdout and stderr; cwd: the temporary folder
    unless given) and return its Popen.  It runs `source` (dedented) as
    ``python -c``; with `script`, a path, `source` written to that file and
    run as a script (a spawned template imports the main module from its
    file, as multiprocessing's does); with `module`, ``python -m module``.
    `args` follow.  It has a session (and process group) of its own, so that
    its pool workers can be killed with it, unless new_session=False (for a
    scenario that makes a process group of its own: a session leader may
    not).  keep_cr: byte pipes (run_python decodes them as they are)."""
    if module is not None:
        argv = ["-m", module]
    elif script is not None:
        with open(script, "w") as f:
            f.write(textwrap.dedent(source))
        argv = [str(script)]
    else:
        argv = ["-c", textwrap.dedent(source)]
    return subprocess.Popen(
        [sys.executable, *argv, *map(str, args)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=not keep_cr, env=python_env(), cwd=cwd or tempfile.gettempdir(),
        start_new_session=new_session)


def read_line(proc, timeout=30):
    """The next line proc (start_python's) prints, stripped.  A child that
    prints none within `timeout` seconds (stuck) has its process group
    killed and fails the test with what it wrote on stderr, instead of
    blocking the run until the hang guard ends it."""
    got = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not reader.is_alive():
        return got[0].strip()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    reader.join(10)
    err = proc.stderr.read() if proc.stderr else ""
    pytest.fail(f"the child printed no line within {timeout} s\n--- stderr ---\n{err}")


def run_python(source=None, timeout=60, cwd=None, args=(), script=None, module=None,
               new_session=True, keep_cr=False):
    """start_python(...), waited for: a CompletedProcess with text
    stdout/stderr.  Fails the test on timeout, after killing the snippet's
    process group (its pool workers included), or only the snippet when it
    has no session of its own."""
    proc = start_python(source, args, cwd, script, module, new_session, keep_cr)
    # The hang guard waits for this timeout to fail the test by name (a
    # guard shorter than it would end the whole run first), then starts
    # again for the rest of the test.
    arm_hang_guard(timeout + HANG_TIMEOUT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            if new_session:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        out, err = _text(proc.communicate(), keep_cr)
        pytest.fail(f"snippet did not finish within {timeout} s\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    finally:
        arm_hang_guard(HANG_TIMEOUT)
    out, err = _text((out, err), keep_cr)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _text(outputs, keep_cr):
    """A byte pipe's output (keep_cr) as text, carriage returns kept."""
    if not keep_cr:
        return outputs
    return tuple(b.decode("utf-8", "replace") for b in outputs)


def run_scenario(source, timeout=60, method=None, tmp_path=None, new_session=True):
    """run_python(source) for a scenario that must exit 0 (the test fails
    otherwise, with its output); its stdout.  With a start method, source
    runs as a script file in tmp_path (a spawned template imports the main
    module, as multiprocessing's does) with ``{method}`` replaced."""
    script = None
    if method is not None:
        source = textwrap.dedent(source).replace("{method}", repr(method))
        script = tmp_path / "scenario.py"
    r = run_python(source, timeout, script=script, new_session=new_session)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout
