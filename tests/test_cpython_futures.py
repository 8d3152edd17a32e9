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
out: pyenv's 3.11.7 and 3.12.1 here), they are taken from the folder named by
CPOOL_CPYTHON_TESTS, else from the distribution's test suite of the same
version (Debian: libpythonX.Y-testsuite, in /usr/lib/pythonX.Y/test).
CPOOL_CPYTHON_TESTS may name a newer CPython's test folder (its version read
from the .../pythonX.Y/test it is): its test_concurrent_futures package then
runs on this interpreter, once what its tests take from test.support and this
interpreter's lacks has been added (tests/support_compat.py).  None of them:
with CPOOL_CPYTHON_FUTURES=required (set by CI's gates) the file fails to
import, loudly; else the module is skipped, saying why (shown by pytest -ra),
so the README's test command runs on a fresh machine whose Python lacks them.

What CI runs: on the main Python (3.11), Debian's 3.11 suite
(libpython3.11-testsuite, which .ci/run installs); in
scripts/ci_other_pythons.sh, 3.9's, 3.10's and 3.13's own, and on 3.12 the
suite of pyenv's 3.13.0, because pyenv's 3.12.1 has none, Debian 12 ships no
3.12, and no package found on the registries CI reaches (Debian's, PyPI)
carries 3.12's.  That is 3.13's tests of
3.12's concurrent.futures (Future, wait, as_completed) and of cpool's
executor; on 3.12 they all pass with the same exclusions as on 3.13.
SUITE_VERSION says which version's tests ran.

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
import support_compat


# (major, minor) of the CPython whose tests run: this interpreter's, unless
# _find_elsewhere finds another version's; FOUND: where they are, if not in
# this interpreter's test package.
SUITE_VERSION = sys.version_info[:2]
FOUND = None


def _load():
    """The modules holding CPython's executor tests, for this interpreter."""
    global SUITE_VERSION, FOUND
    try:
        top = importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        FOUND = _find_elsewhere()
        SUITE_VERSION = support_compat.suite_version(FOUND)
        top = _import_as_top_level(FOUND, SUITE_VERSION)
    if not hasattr(top, "__path__"):
        return [top]
    names = ("executor", "test_process_pool", "test_wait", "test_as_completed",
             "test_shutdown", "test_deadlock", "test_init")
    return [importlib.import_module(f"{top.__name__}.{n}") for n in names]


def _find_elsewhere():
    """The tests in CPOOL_CPYTHON_TESTS or the distribution's test suite."""
    ver = "%d.%d" % sys.version_info[:2]
    for where in filter(None, (os.environ.get("CPOOL_CPYTHON_TESTS"),
                               f"/usr/lib/python{ver}/test")):
        for name in ("test_concurrent_futures", "test_concurrent_futures.py"):
            found = os.path.join(where, name)
            if os.path.exists(found):
                return found
    why = ("CPython's executor tests (test.test_concurrent_futures) are not "
           "in this interpreter's test package; install them (Debian: "
           "libpython%s-testsuite) or set CPOOL_CPYTHON_TESTS to a folder "
           "holding them: this version's test folder, or a newer CPython's "
           "(.../lib/python3.N/test)" % ver)
    if os.environ.get("CPOOL_CPYTHON_FUTURES") == "required":
        raise ImportError(why)  # pragma: no cover - loud on purpose
    pytest.skip(why + "; not run", allow_module_level=True)


def _import_as_top_level(found, version):
    """found, imported as the top-level test_concurrent_futures from a folder
    of its own put on sys.path, so that workers started by spawn, which
    import the tests' functions by module name, find them too.  This
    interpreter's version's tests are linked there; a newer version's
    package is reached through an __init__ of ours (support_compat.borrow),
    which first adds to test.support what those tests need of it, in this
    process and in each worker, and then runs the package's own."""
    name = os.path.basename(found)
    top = tempfile.mkdtemp(prefix="cpool-cpython-tests-")
    atexit.register(shutil.rmtree, top, True)
    if version == sys.version_info[:2]:
        os.symlink(found, os.path.join(top, name))
    elif version > sys.version_info[:2] and os.path.isdir(found):
        os.mkdir(os.path.join(top, name))
        with open(os.path.join(top, name, "__init__.py"), "w") as f:
            f.write(f"# CPython {version[0]}.{version[1]}'s executor tests, on "
                    "this Python (written by cpool's tests/test_cpython_futures.py)\n"
                    "import support_compat\n"
                    f"support_compat.borrow(globals(), {found!r})\n")
    else:
        raise ImportError(  # pragma: no cover - loud on purpose
            f"{found}: CPython {version[0]}.{version[1]}'s tests; this is "
            f"{sys.version_info[0]}.{sys.version_info[1]}, which runs its own "
            "version's or a newer one's (package) only")
    sys.path.append(top)
    return importlib.import_module("test_concurrent_futures")


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


def test_the_tests_are_the_suite_found():
    # Each test module is the one in the suite found (a newer version's is
    # reached through a package of ours, which must not hide it).
    assert len(MODULES) in (1, 7)
    for m in MODULES:
        path = os.path.realpath(m.__file__)
        if FOUND is None:
            assert m.__name__.startswith("test.test_concurrent_futures")
        else:
            assert path.startswith(os.path.realpath(FOUND)), (path, FOUND)
            assert support_compat.suite_version(os.path.dirname(path) if len(MODULES) > 1
                                                else path) == SUITE_VERSION
    assert SUITE_VERSION >= sys.version_info[:2]


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
