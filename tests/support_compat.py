"""Running a newer CPython's executor tests on this interpreter.

``suite_version(path)`` tells which CPython a test suite's file is of.
``add_missing()`` adds to this interpreter's test.support what a newer
version's executor tests take from it and this one lacks, with the meaning
it has here; ``borrow()`` makes a package of ours the newer version's test
package, once add_missing() has run.

tests/test_cpython_futures.py runs CPython 3.13's test_concurrent_futures on
3.12 where 3.12's own is not installed (pyenv's 3.12.1 leaves it out).  Those
tests import from test.support four things 3.12's does not have:
Py_GIL_DISABLED, requires_gil_enabled(), and the ``thread=`` keyword of
check_sanitizer() and skip_if_sanitizer().  ``add_missing()`` adds them to
this interpreter's test.support: only what is missing, so whatever is there
keeps its meaning.  The test_concurrent_futures package that
test_cpython_futures.py writes has an ``__init__`` that calls borrow(), so
add_missing() runs before any of the tests is imported, in the test process
and in every worker started by spawn or forkserver, which import the tests'
functions by module name (this folder is on their sys.path too, as on the
test process's).
"""
import inspect
import os
import re
import sys
import sysconfig
import unittest


def suite_version(path):
    """(major, minor) of the CPython whose test suite holds path (a file or
    folder right inside its .../pythonX.Y/test folder, links resolved), else
    this interpreter's."""
    parts = os.path.realpath(path).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "test":
        m = re.fullmatch(r"python(\d+)\.(\d+)", parts[-3])
        if m:
            return int(m.group(1)), int(m.group(2))
    return sys.version_info[:2]


def _config(name):
    return sysconfig.get_config_var(name) or ""


def add_missing():
    from test import support

    gil_disabled = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if not hasattr(support, "Py_GIL_DISABLED"):
        support.Py_GIL_DISABLED = gil_disabled
    if not hasattr(support, "requires_gil_enabled"):
        def requires_gil_enabled(msg="needs the GIL enabled"):
            return unittest.skipIf(gil_disabled, msg)

        support.requires_gil_enabled = requires_gil_enabled
    if "thread" in inspect.signature(support.check_sanitizer).parameters:
        return
    # ThreadSanitizer: as the build says (its compiler flags or configure's).
    tsan = ("-fsanitize=thread" in _config("CFLAGS")
            or "--with-thread-sanitizer" in _config("CONFIG_ARGS"))
    check_others = support.check_sanitizer

    def check_sanitizer(*, thread=False, **others):
        if not (thread or any(others.values())):
            raise ValueError("name at least one sanitizer")
        return bool((thread and tsan) or (any(others.values()) and check_others(**others)))

    def skip_if_sanitizer(reason=None, *, thread=False, **others):
        return unittest.skipIf(check_sanitizer(thread=thread, **others),
                               reason or "not working with sanitizers active")

    support.check_sanitizer = check_sanitizer
    support.skip_if_sanitizer = skip_if_sanitizer


def borrow(namespace, folder):
    """Makes the package whose globals are namespace the test package in
    folder (a newer version's test_concurrent_futures): add_missing(), then
    its modules are looked for in folder and its __init__ runs here."""
    add_missing()
    init = os.path.join(folder, "__init__.py")
    namespace["__path__"] = [folder]
    with open(init) as f:
        source = f.read()
    exec(compile(source, init, "exec"), namespace)
