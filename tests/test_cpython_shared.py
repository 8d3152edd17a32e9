"""CPython's own Value and Array tests, run against cpool's shared types.

_TestValue and _TestArray of the interpreter's test._test_multiprocessing
are driven through its ProcessesMixin with cpool's Value, Array, RawValue,
RawArray, Lock and RLock, under each start method (multiprocessing's Process
carries them to the child: by inheritance under fork, by pickling, i.e. by
reference, under spawn and forkserver).  A missing ``test`` package fails
the suite: it is never skipped.
"""
import multiprocessing
import unittest

import cpool

try:
    import test._test_multiprocessing as tmp
except ImportError as e:  # pragma: no cover - loud on purpose
    raise ImportError(
        "CPython's test package (test._test_multiprocessing) is required to "
        "run cpool's conformance tests") from e


class CpoolSharedMixin(tmp.ProcessesMixin):
    Value = staticmethod(cpool.Value)
    Array = staticmethod(cpool.Array)
    RawValue = staticmethod(cpool.RawValue)
    RawArray = staticmethod(cpool.RawArray)
    Lock = staticmethod(cpool.Lock)
    RLock = staticmethod(cpool.RLock)


def _with_start_method(method):
    class StartMethod:
        @classmethod
        def setUpClass(cls):
            cls._old_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(method, force=True)
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            super().tearDownClass()
            multiprocessing.set_start_method(cls._old_method, force=True)
    return StartMethod


for _method in ("fork", "spawn", "forkserver"):
    for _base in (tmp._TestValue, tmp._TestArray):
        _name = f"TestCPython{_base.__name__[5:]}_{_method}"
        globals()[_name] = type(_name, (_with_start_method(_method), _base,
                                        CpoolSharedMixin, unittest.TestCase), {})


def test_the_classes_really_use_cpool():
    assert CpoolSharedMixin.Value is cpool.Value
    assert type(CpoolSharedMixin.Value("i", 1).get_lock()) is cpool.RLock
