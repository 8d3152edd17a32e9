"""Errors from tasks as the caller gets them: the task's exception with a
RemoteTraceback as its cause; unpicklable results (MaybeEncodingError),
arguments and functions (pickle's own error, at submission); an exception
that cannot be rebuilt (ResultUnpicklingError); SystemExit and
KeyboardInterrupt in a task (TaskAbortedError)."""
import inspect
import multiprocessing.pool
import pickle
import sys
import threading

import pytest

import cpool
from conftest import each_start_method
from tasks import T, square, identity, raise_value_error


# -- functions run in the workers (module level: pickled by reference) --------

def raise_marked():
    raise LookupError("marker raised in the worker", 42)


def return_lambda(_=None):
    return lambda: 0


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a)


def raise_needs_two(_=None):
    raise NeedsTwoArgs(1, 2)


def raise_system_exit(_=None):
    sys.exit(5)


def raise_keyboard_interrupt(_=None):
    raise KeyboardInterrupt


# -- helpers ------------------------------------------------------------------

def expected_pickling_error(obj):
    """The exception type pickle raises for obj in this process."""
    try:
        pickle.dumps(obj)
    except Exception as e:
        return type(e)
    raise AssertionError(f"{obj!r} pickles")


# -- errors from tasks --------------------------------------------------------

def test_remote_traceback(pool):
    with pytest.raises(LookupError) as info:
        pool.apply(raise_marked)
    exc = info.value
    assert type(exc) is LookupError
    assert exc.args == ("marker raised in the worker", 42)
    cause = exc.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    src_line = next(line.strip() for line in inspect.getsource(raise_marked).splitlines()
                    if line.strip().startswith("raise"))
    assert src_line in str(cause)
    assert "raise_marked" in str(cause)


def test_remote_traceback_map(pool):
    with pytest.raises(ValueError) as info:
        pool.map(raise_value_error, [1])
    assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_unpicklable_result(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(return_lambda)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.map(return_lambda, range(5))
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply_async(return_lambda).get(timeout=T)
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


@pytest.mark.parametrize("make", [lambda: threading.Lock(), lambda: (lambda: 0)],
                         ids=["lock", "lambda"])
@each_start_method()
def test_unpicklable_argument(pool, make):
    bad = make()
    expected = expected_pickling_error(bad)
    with pytest.raises(expected):
        pool.apply_async(identity, (bad,))
    with pytest.raises(expected):
        pool.apply(identity, (bad,))
    with pytest.raises(expected):
        pool.map(identity, [1, bad, 2])
    assert pool._cache == {}
    assert pool.apply(square, (5,)) == 25
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]


def test_unpicklable_function(pool, monkeypatch):
    # Without cloudpickle (with it, a lambda goes by value: test_cloudpickle.py)
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    fn = lambda x: x  # noqa: E731 - a local lambda cannot be pickled
    expected = expected_pickling_error(fn)
    with pytest.raises(expected):
        pool.apply(fn, (1,))
    with pytest.raises(expected):
        pool.map(fn, [1, 2])
    assert pool.map(square, [3]) == [9]


def test_exception_that_cannot_be_unpickled(pool):
    # pickle can dump it but not load it: the caller gets an error, no hang
    try:
        pickle.loads(pickle.dumps(NeedsTwoArgs(1, 2)))
    except Exception as e:
        expected = type(e)
    with pytest.raises(cpool.ResultUnpicklingError) as info:
        pool.apply_async(raise_needs_two).get(timeout=T)
    # it names what failed, and why
    assert isinstance(info.value, pickle.UnpicklingError)
    assert type(info.value.__cause__) is expected
    assert "exception raised by task 0" in str(info.value)
    assert pool.map(square, range(5)) == [square(i) for i in range(5)]


@pytest.mark.parametrize("func", [raise_system_exit, raise_keyboard_interrupt])
def test_base_exceptions_in_task(pool, func):
    r = pool.apply_async(func)
    # Raising SystemExit or KeyboardInterrupt in the caller would exit or
    # "interrupt" it: a TaskAbortedError carries the original instead.
    with pytest.raises(cpool.TaskAbortedError) as info:
        r.get(timeout=T)
    assert type(info.value.__cause__) is {raise_system_exit: SystemExit,
                                          raise_keyboard_interrupt: KeyboardInterrupt}[func]
    assert r.ready()
    assert pool.map(square, range(10)) == [square(i) for i in range(10)]
