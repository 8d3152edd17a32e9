"""CPython's own Pool tests, run against cpool.

The classes _TestPool, _TestPoolWorkerErrors and _TestPoolWorkerLifetime of
the interpreter's test._test_multiprocessing are driven through its
ProcessesMixin with cpool's Pool, as CPython drives them with its own.  The
last two call ``multiprocessing.Pool`` by module-global name, so for them the
test module's ``multiprocessing`` is a view of multiprocessing whose Pool is
cpool's.  Each class runs under each of cpool's start methods.  A missing ``test`` package fails the suite: it is never skipped.
"""
import functools
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
    """multiprocessing, but Pool is cpool's (with the given start method)."""

    def __init__(self, method):
        super().__init__("multiprocessing")
        self.Pool = functools.partial(cpool.Pool, context=method)

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


@pytest.fixture(scope="module", autouse=True)
def _fork_start_method():
    # multiprocessing's own processes in these tests (they start a few).
    old = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("fork", force=True)
    yield
    multiprocessing.set_start_method(old, force=True)


@pytest.fixture
def _cpool_as_multiprocessing(monkeypatch, request):
    monkeypatch.setattr(tmp, "multiprocessing",
                        _MultiprocessingWithCpoolPool(request.cls.start_method))


# Each class once per start method of cpool's Pool: the template forked from
# the parent, or a fresh interpreter ("spawn", "forkserver").
for _method in ("fork", "spawn", "forkserver"):
    _pool = staticmethod(functools.partial(cpool.Pool, context=_method))
    _mixin = type(f"CpoolMixin_{_method}", (tmp.ProcessesMixin,),
                  {"Pool": _pool, "start_method": _method})
    for _base, _patched in ((tmp._TestPool, False), (tmp._TestPoolWorkerErrors, True),
                            (tmp._TestPoolWorkerLifetime, True)):
        _name = f"TestCPython{_base.__name__[5:]}_{_method}"
        _cls = type(_name, (_base, _mixin, unittest.TestCase), {})
        if _patched:
            _cls = pytest.mark.usefixtures("_cpool_as_multiprocessing")(_cls)
        globals()[_name] = _cls
del _cls


def test_the_patched_classes_really_use_cpool(monkeypatch):
    # Guard against the substitution silently not applying.
    for method in ("fork", "spawn", "forkserver"):
        monkeypatch.setattr(tmp, "multiprocessing", _MultiprocessingWithCpoolPool(method))
        assert tmp.multiprocessing.Pool.func is cpool.Pool
        assert tmp.multiprocessing.Pool.keywords == {"context": method}
        cls = globals()[f"TestCPythonPool_{method}"]
        assert cls.Pool.func is cpool.Pool and cls.Pool.keywords == {"context": method}
