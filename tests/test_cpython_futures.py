"""CPython's own ProcessPoolExecutor tests, run against cpool's executor.

The process-pool test classes of the interpreter's test.test_concurrent_futures
(a module on 3.9-3.11, a package on 3.12+) -- ExecutorTest, WaitTests,
AsCompletedTests, ProcessPoolShutdownTest, ExecutorDeadlockTest, the
initializer tests -- under each start method (their ProcessPoolFork,
ProcessPoolSpawn and ProcessPoolForkserver mixins), with executor_type
cpool.ProcessPoolExecutor, and the test modules' ``futures`` a view of
concurrent.futures whose ProcessPoolExecutor is cpool's (some tests construct
one by that name).

Where the interpreter's own test package lacks them (some builds leave them
out, as the pyenv 3.11 and 3.12 here do), the distribution's test suite of the
same version is used (Debian: libpythonX.Y-testsuite, in
/usr/lib/pythonX.Y/test), or the folder named by CPOOL_CPYTHON_TESTS.  None
of them: with CPOOL_CPYTHON_FUTURES=required (CI's gate for the main
Python, which installs Debian's test suite first) the file fails to import,
loudly; else the module is skipped, saying why (shown by pytest -ra), so the
README's test command runs on a fresh machine whose Python lacks them.

EXCLUDED lists each test left out, with the reason: tests that assert what
cpool deliberately does better (a dead worker breaks the whole executor),
that read the stdlib executor's machinery (its manager thread, call queue),
or that run the stdlib's executor in a fresh interpreter.  Excluded tests are
removed, not skipped; a test checks that each one named still exists.
"""
import atexit
import importlib
import os
import shutil
import sys
import tempfile
import types
import unittest
from concurrent import futures as _cf

import pytest

import cpool
import cpool.futures


def _load():
    """The modules holding CPython's executor tests, for this interpreter."""
    try:
        top = importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        top = _load_elsewhere()
    if not hasattr(top, "__path__"):
        return [top]
    names = ("executor", "test_process_pool", "test_wait", "test_as_completed",
             "test_shutdown", "test_deadlock", "test_init")
    return [importlib.import_module(f"{top.__name__}.{n}") for n in names]


def _load_elsewhere():
    """The tests from the distribution's test suite (or CPOOL_CPYTHON_TESTS),
    as a top-level module: a folder of their own (a link to them) goes on
    sys.path, so that workers started by spawn, which import the tests'
    functions by module name, find them too."""
    ver = "%d.%d" % sys.version_info[:2]
    for where in filter(None, (os.environ.get("CPOOL_CPYTHON_TESTS"),
                               f"/usr/lib/python{ver}/test")):
        for name in ("test_concurrent_futures", "test_concurrent_futures.py"):
            found = os.path.join(where, name)
            if os.path.exists(found):
                break
        else:
            continue
        link_dir = tempfile.mkdtemp(prefix="cpool-cpython-tests-")
        atexit.register(shutil.rmtree, link_dir, True)
        os.symlink(found, os.path.join(link_dir, name))
        sys.path.append(link_dir)
        return importlib.import_module("test_concurrent_futures")
    why = ("CPython's executor tests (test.test_concurrent_futures) are not "
           "in this interpreter's test package; install them (Debian: "
           "libpython%s-testsuite) or set CPOOL_CPYTHON_TESTS to a folder "
           "holding them" % ver)
    if os.environ.get("CPOOL_CPYTHON_FUTURES") == "required":
        raise ImportError(why)  # pragma: no cover - loud on purpose
    pytest.skip(why + "; not run", allow_module_level=True)


MODULES = _load()

_FORK_ONLY = "CPython skips it under fork (the stdlib spawns its workers on demand)"
_HANG = ("CPython skips it for ProcessPoolExecutor (gh-83386: the stdlib's hangs); "
         "cpool's case is in tests/test_futures.py")

# name -> why it is left out (for every class that has it)
EXCLUDED = {
    # Deliberate differences (README, "concurrent.futures").
    "test_killed_child":
        "asserts that a killed worker breaks the whole executor; cpool fails only "
        "that worker's futures (WorkerLostError, a BrokenProcessPool) and goes on "
        "(tests/test_futures.py checks it)",
    "test_idle_process_reuse_one":
        "asserts that workers start on demand; cpool starts all of them at once",
    "test_idle_process_reuse_multiple":
        "asserts that workers start on demand; cpool starts all of them at once",
    "test_max_tasks_per_child":
        "asserts ValueError for max_tasks_per_child under fork; cpool allows it "
        "(replacements fork from its single-threaded template; "
        "tests/test_futures.py checks the replacement under fork and spawn)",
    "test_max_tasks_per_child_defaults_to_spawn_context":
        "asserts that max_tasks_per_child switches mp_context=None to spawn; "
        "cpool keeps fork, which is safe for it",
    "test_error_at_task_unpickle":
        "asserts that an argument failing to unpickle in the worker breaks the "
        "executor; cpool fails only that future, with the unpickling error",
    "test_exit_at_task_unpickle":
        "asserts that sys.exit() while the worker unpickles an argument kills "
        "it and breaks the executor; in cpool that future fails with the "
        "SystemExit and the worker goes on",
    "test_error_during_result_unpickle_in_result_handler":
        "asserts that a result failing to unpickle breaks the executor; cpool "
        "fails only that future (cpool.ResultUnpicklingError)",
    "test_exit_during_result_unpickle_in_result_handler":
        "asserts that sys.exit() while a result is unpickled breaks the executor; "
        "cpool fails only that future (cpool.ResultUnpicklingError)",
    "test_exit_during_result_pickle_on_worker":
        "asserts the SystemExit raised while the worker pickles a result; cpool "
        "gives multiprocessing's MaybeEncodingError, which names it",
    "test_error_during_result_pickle_on_worker":
        "asserts the PicklingError itself for a result that cannot be pickled; "
        "cpool gives multiprocessing's MaybeEncodingError, which names it",
    # The stdlib executor's machinery, which cpool's does not have.
    "test_del_shutdown":
        "reads the stdlib executor's _executor_manager_thread and _call_queue",
    "test_shutdown_no_wait":
        "reads the stdlib executor's _executor_manager_thread and _call_queue",
    "test_shutdown_deadlock_pickle":
        "reads the stdlib executor's _executor_manager_thread",
    "test_gh105829_should_not_deadlock_if_wakeup_pipe_full":
        "mocks the stdlib executor's _ThreadWakeup pipe",
    "test_python_finalization_error":
        "mocks the start of the stdlib executor's Python threads; cpool's "
        "executor starts none",
    # A fresh interpreter running the stdlib's executor, not cpool's.
    "test_interpreter_shutdown":
        "runs concurrent.futures.ProcessPoolExecutor in a fresh interpreter; "
        "tests/test_futures.py runs the same scenario with cpool's",
    "test_submit_after_interpreter_shutdown":
        "runs concurrent.futures.ProcessPoolExecutor in a fresh interpreter; "
        "tests/test_futures.py runs the same scenario with cpool's",
    "test_hang_gh83386": _HANG,
    "test_processes_terminate":
        "asserts that workers start on demand under spawn and forkserver (3 of 5 "
        "for 3 calls); cpool starts all of them at once (kept under fork)",
    # What CPython itself skips for the process pool.
    "test_max_workers_too_large": "Windows only (CPython skips it elsewhere)",
    "test_max_tasks_early_shutdown": _FORK_ONLY + " (kept under spawn/forkserver)",
}
# Excluded under some start methods only: (name, start methods).
EXCLUDED_UNDER = {
    "test_processes_terminate": ("spawn", "forkserver"),
    "test_max_tasks_early_shutdown": ("fork",),
}


class _FuturesWithCpoolExecutor(types.ModuleType):
    """concurrent.futures, but ProcessPoolExecutor is cpool's."""

    ProcessPoolExecutor = cpool.ProcessPoolExecutor

    def __init__(self):
        super().__init__("concurrent.futures")

    def __getattr__(self, name):
        return getattr(_cf, name)


_VIEW = _FuturesWithCpoolExecutor()


@pytest.fixture(autouse=True)
def _cpool_as_futures(monkeypatch):
    for m in MODULES:
        if getattr(m, "futures", None) is _cf:
            monkeypatch.setattr(m, "futures", _VIEW)


def _excluded(name, ctx):
    if name in EXCLUDED_UNDER:
        return ctx in EXCLUDED_UNDER[name]
    return name in EXCLUDED


def _cpython_classes():
    """(name, class) of every generated process-pool test class."""
    seen = {}
    for m in MODULES:
        for name, cls in vars(m).items():
            if (isinstance(cls, type) and issubclass(cls, unittest.TestCase)
                    and getattr(cls, "executor_type", None) is _cf.ProcessPoolExecutor
                    and getattr(cls, "ctx", None) in ("fork", "spawn", "forkserver")
                    and cls.__module__ == m.__name__):
                seen[name] = cls
    return sorted(seen.items())


CLASSES = _cpython_classes()
for _name, _base in CLASSES:
    _attrs = {"executor_type": cpool.ProcessPoolExecutor, "__module__": __name__}
    for _t in unittest.TestLoader().getTestCaseNames(_base):
        if _excluded(_t, _base.ctx):
            _attrs[_t] = None      # removed (not callable: not collected)
    globals()[f"TestCpool_{_name}"] = type(f"TestCpool_{_name}", (_base,), _attrs)
del _name, _base, _attrs


def test_the_classes_really_use_cpool():
    # Guard against the substitution silently not applying.
    assert len(CLASSES) >= 15, [n for n, _ in CLASSES]
    kinds = {n for n, _ in CLASSES}
    for ctx in ("Fork", "Spawn", "Forkserver"):
        assert f"ProcessPool{ctx}ProcessPoolExecutorTest" in kinds
        assert f"ProcessPool{ctx}WaitTest" in kinds
    for name, _ in CLASSES:
        cls = globals()[f"TestCpool_{name}"]
        assert cls.executor_type is cpool.ProcessPoolExecutor
        assert issubclass(cls.executor_type, _cf.ProcessPoolExecutor)


def test_every_exclusion_names_a_test():
    names = set()
    for _, cls in CLASSES:
        names.update(unittest.TestLoader().getTestCaseNames(cls))
    # Tests newer interpreters added (or older ones dropped) may be absent.
    optional = {"test_max_tasks_per_child", "test_max_tasks_per_child_defaults_to_spawn_context",
                "test_max_tasks_early_shutdown", "test_python_finalization_error",
                "test_gh105829_should_not_deadlock_if_wakeup_pipe_full",
                "test_hang_gh83386", "test_idle_process_reuse_one",
                "test_idle_process_reuse_multiple", "test_crash_big_data",
                "test_error_at_task_unpickle"}
    assert set(EXCLUDED) - names <= optional, set(EXCLUDED) - names
