"""CPython's own Pool tests, run against cpool.

The classes _TestPool, _TestPoolWorkerErrors and _TestPoolWorkerLifetime of
the interpreter's test._test_multiprocessing are driven through its
ProcessesMixin with cpool's Pool, as CPython drives them with its own.  The
last two call ``multiprocessing.Pool`` by module-global name, so for them the
test module's ``multiprocessing`` is a view of multiprocessing whose Pool is
cpool's.  A missing ``test`` package fails the suite: it is never skipped.
"""
import multiprocessing
import types
import unittest

import pytest

import cpool

try:
    import test._test_multiprocessing as tmp
except ImportError as e:  # pragma: no cover - loud on purpose
    raise ImportError(
        "CPython's test package (test._test_multiprocessing) is required to "
        "run cpool's conformance tests; install the interpreter's test "
        "package (on Debian: the libpythonX.Y-testsuite package)") from e


class _MultiprocessingWithCpoolPool(types.ModuleType):
    """multiprocessing, but Pool is cpool's."""

    def __init__(self):
        super().__init__("multiprocessing")
        self.Pool = cpool.Pool

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


@pytest.fixture(scope="module", autouse=True)
def _fork_start_method():
    old = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("fork", force=True)
    yield
    multiprocessing.set_start_method(old, force=True)


@pytest.fixture
def _cpool_as_multiprocessing(monkeypatch):
    monkeypatch.setattr(tmp, "multiprocessing", _MultiprocessingWithCpoolPool())


class CpoolMixin(tmp.ProcessesMixin):
    Pool = staticmethod(cpool.Pool)


class TestCPythonPool(tmp._TestPool, CpoolMixin, unittest.TestCase):
    pass


@pytest.mark.usefixtures("_cpool_as_multiprocessing")
class TestCPythonPoolWorkerErrors(tmp._TestPoolWorkerErrors, CpoolMixin,
                                  unittest.TestCase):
    pass


@pytest.mark.usefixtures("_cpool_as_multiprocessing")
class TestCPythonPoolWorkerLifetime(tmp._TestPoolWorkerLifetime, CpoolMixin,
                                    unittest.TestCase):
    pass


def test_the_patched_classes_really_use_cpool(_cpool_as_multiprocessing):
    # Guard against the substitution silently not applying.
    assert tmp.multiprocessing.Pool is cpool.Pool
    assert CpoolMixin.Pool is cpool.Pool
