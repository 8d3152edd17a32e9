"""Lambdas, closures, nested and interactively defined functions: what the
standard pickler cannot send by reference goes by value with cloudpickle
(cpool._cloud), under every start method, for apply*, map*, starmap*,
imap*, and the initializer; only the callable, and only when its normal
pickle fails.  Without cloudpickle the error says how to get it, with the
type it always had.  The pool works after every error."""
import os
import pickle
import threading

import pytest

import cpool
from conftest import START_METHODS, run_python, run_scenario, shutdown

import cloudpickle

EXEC_METHODS = ("spawn", "forkserver")
HINT = "pip install cpool[cloudpickle]"


def triple(x):
    return 3 * x


@pytest.fixture(scope="module", params=START_METHODS)
def mpool(request):
    p = cpool.Pool(2, context=request.param)
    yield p
    shutdown(p)


def callables():
    """A lambda over a local, a closure from a factory, a nested function:
    none pickles by reference."""
    k = 7

    def make(n):
        def add(x):
            return x + n
        return add

    def nested(x):
        return x * k

    fs = {"lambda": lambda x: x - k, "closure": make(k), "nested": nested}
    for f in fs.values():
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pickle.dumps(f)
    return fs


def expected(name, x):
    return {"lambda": x - 7, "closure": x + 7, "nested": x * 7}[name]


def run_entry(pool, entry, f, xs):
    """f over xs through one of the pool's entry points: the list of results."""
    if entry == "apply":
        return [pool.apply(f, (x,)) for x in xs]
    if entry == "apply_async":
        return [r.get(30) for r in [pool.apply_async(f, (x,)) for x in xs]]
    if entry == "apply_kwds":
        return [pool.apply(f, (), {"x": x}) for x in xs]
    if entry == "map":
        return pool.map(f, xs, chunksize=2)
    if entry == "map_async":
        return pool.map_async(f, xs).get(30)
    if entry == "starmap":
        return pool.starmap(f, [(x,) for x in xs])
    if entry == "starmap_async":
        return pool.starmap_async(f, [(x,) for x in xs], 3).get(30)
    if entry == "imap":
        return list(pool.imap(f, iter(xs)))
    if entry == "imap_unordered":
        return sorted(pool.imap_unordered(f, xs, chunksize=2))
    raise AssertionError(entry)


ENTRIES = ("apply", "apply_async", "apply_kwds", "map", "map_async", "starmap",
           "starmap_async", "imap", "imap_unordered")


@pytest.mark.parametrize("entry", ENTRIES)
def test_lambdas_closures_and_nested_functions_run(mpool, entry):
    xs = list(range(5))
    for name, f in callables().items():
        assert run_entry(mpool, entry, f, xs) == [expected(name, x) for x in xs], name


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_closure_sees_the_values_of_the_moment_it_is_sent(mpool, entry):
    # By value each time: no cache of an earlier pickle of the same function.
    box = [1]
    f = lambda x: x * box[0]    # noqa: E731
    assert run_entry(mpool, entry, f, [1, 2]) == [1, 2]
    box[0] = 10
    assert run_entry(mpool, entry, f, [1, 2]) == [10, 20]


def test_the_arguments_keep_their_paths(mpool):
    # A large bytes argument goes out of band (shared memory), a range
    # as slices, next to a callable that goes by value.
    big = b"x" * (4 << 20)
    assert mpool.apply(lambda b, n: len(b) + n, (big, 1)) == (4 << 20) + 1
    assert mpool.map(lambda b: len(b), [big, bytearray(big)]) == [4 << 20] * 2
    assert mpool.map(lambda x: -x, range(1000)) == [-x for x in range(1000)]


@pytest.fixture
def cloud_calls(monkeypatch):
    """cloudpickle.dumps, counted."""
    calls = []
    real = cloudpickle.dumps

    def dumps(obj, *a, **k):
        calls.append(obj)
        return real(obj, *a, **k)
    monkeypatch.setattr(cloudpickle, "dumps", dumps)
    return calls


def test_a_picklable_function_goes_by_reference_without_cloudpickle(mpool, cloud_calls):
    assert mpool.apply(triple, (2,)) == 6
    assert mpool.map(triple, range(3)) == [0, 3, 6]
    assert list(mpool.imap(triple, range(3))) == [0, 3, 6]
    assert cloud_calls == []
    f = lambda x: x    # noqa: E731
    assert mpool.apply(f, (1,)) == 1
    assert cloud_calls == [f]


def lock_error():
    try:
        pickle.dumps(threading.Lock())
    except Exception as e:
        return e
    raise AssertionError("a lock pickled")


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_unpicklable_argument_gives_its_own_error_not_retried(mpool, entry,
                                                                 cloud_calls):
    want = lock_error()
    lock = threading.Lock()
    with pytest.raises(type(want)) as info:     # a picklable function
        run_entry(mpool, entry, triple, [1, lock])
    assert str(info.value) == str(want)
    assert HINT not in str(info.value)
    assert cloud_calls == []                    # never sent to cloudpickle
    # The callable fails too: the argument's error is what the caller sees,
    # not hidden by the callable's.
    f = lambda x: x    # noqa: E731
    with pytest.raises(type(want)) as info:
        run_entry(mpool, entry, f, [1, lock])
    assert str(info.value) == str(want)
    assert run_entry(mpool, entry, triple, [1, 2]) == [3, 6]


def test_an_unpicklable_kwd_or_star_item_gives_its_own_error(mpool):
    want = lock_error()
    f = lambda *a, **k: 0    # noqa: E731
    with pytest.raises(type(want), match=str(want)):
        mpool.apply(f, (), {"x": threading.Lock()})
    with pytest.raises(type(want), match=str(want)):
        mpool.starmap(f, [(1, threading.Lock())])
    assert mpool.apply(f, (1,)) == 0


def test_a_callable_cloudpickle_cannot_send_either(mpool):
    lock = threading.Lock()
    f = lambda x: lock    # noqa: E731
    want = lock_error()
    for entry in ("apply", "map", "imap"):
        with pytest.raises(type(want), match=str(want)):
            run_entry(mpool, entry, f, [1])
    assert mpool.apply(lambda: 5) == 5


def test_an_unpicklable_callable_with_callbacks(mpool):
    got = []
    done = threading.Event()

    def cb(v):
        got.append(v)
        done.set()
    mpool.apply_async(lambda: 41 + 1, callback=cb)
    assert done.wait(30) and got == [42]
    assert mpool.map_async(lambda x: x, [1, 2], callback=got.append).get(30) == [1, 2]


@pytest.mark.parametrize("method", START_METHODS)
def test_a_lambda_and_a_closure_as_initializer(method):
    tag = f"init-{method}"

    def init(suffix):
        os.environ["CPOOL_TEST_INIT"] = tag + suffix
    for initializer, initargs, want in [
            (lambda: os.environ.__setitem__("CPOOL_TEST_INIT", tag), (), tag),
            (init, ("!",), tag + "!")]:
        p = cpool.Pool(2, initializer=initializer, initargs=initargs, context=method)
        try:
            got = p.map(lambda _: os.environ.get("CPOOL_TEST_INIT"), range(4), chunksize=1)
            assert got == [want] * 4
        finally:
            shutdown(p)


@pytest.mark.parametrize("method", START_METHODS)
def test_the_executor_sends_them_too(method):
    """concurrent.futures' way in: submit(), map() and the initializer."""
    tag = f"executor-{method}"
    with cpool.ProcessPoolExecutor(
            2, mp_context=method,
            initializer=lambda: os.environ.__setitem__("CPOOL_TEST_INIT", tag)) as ex:
        for name, f in callables().items():
            assert ex.submit(f, 3).result(30) == expected(name, 3), name
            assert list(ex.map(f, range(4), timeout=30)) == [
                expected(name, x) for x in range(4)], name
        assert ex.submit(lambda: os.environ.get("CPOOL_TEST_INIT")).result(30) == tag


@pytest.mark.parametrize("method", EXEC_METHODS)
def test_an_initializer_cloudpickle_cannot_send(method):
    lock = threading.Lock()
    want = lock_error()
    with pytest.raises(type(want), match=str(want)):
        cpool.Pool(1, initializer=lambda: lock, context=method)
    p = cpool.Pool(1, initializer=lambda: None, context=method)
    try:
        assert p.apply(triple, (1,)) == 3
    finally:
        shutdown(p)


# -- functions of __main__ ------------------------------------------------------

SCRIPT = """
import os
import cloudpickle
import cpool

by_value = []
real_dumps = cloudpickle.dumps
def counted(f, *a, **k):
    by_value.append(f)
    return real_dumps(f, *a, **k)
cloudpickle.dumps = counted

scale = 3
top = lambda x: x * scale

def by_reference(x):
    return x + 1

if __name__ == "__main__":
    k = 5
    inner = lambda x: x + k

    def nested(x):
        return x * k

    with cpool.Pool(2, context={method},
                    initializer=lambda: os.environ.__setitem__("TAG", "set")) as p:
        for f in (top, inner, nested, by_reference):
            xs = list(range(4))
            want = [f(x) for x in xs]
            assert p.apply(f, (2,)) == f(2), f
            assert p.map(f, xs) == want, f
            assert p.starmap(f, [(x,) for x in xs]) == want, f
            assert list(p.imap(f, xs)) == want, f
            assert sorted(p.imap_unordered(f, xs)) == sorted(want), f
            assert p.map_async(f, xs).get(30) == want, f
            assert p.apply_async(f, (1,)).get(30) == f(1), f
        assert p.apply(lambda: os.environ.get("TAG")) == "set"
    # A function the workers' __main__ has goes by reference, as before;
    # one defined under the main guard is missing there under spawn.
    assert by_reference not in by_value
    assert (nested in by_value) == ({method} != "fork")
    print("ok")
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_functions_of_a_scripts_main(method, tmp_path):
    assert run_scenario(SCRIPT, method=method, tmp_path=tmp_path) == "ok\n"


INTERACTIVE = """
import os
import cpool

def f(x):
    return x * 2

class Adder:
    def __call__(self, x):
        return x + 100

def init(tag):
    os.environ["TAG"] = tag

with cpool.Pool(2, context=METHOD, initializer=init, initargs=("set",)) as p:
    assert p.apply(f, (3,)) == 6
    assert p.map(f, range(4)) == [0, 2, 4, 6]
    assert p.starmap(f, [(1,), (2,)]) == [2, 4]
    assert list(p.imap(f, range(3))) == [0, 2, 4]
    assert sorted(p.imap_unordered(Adder(), range(3))) == [100, 101, 102]
    assert p.apply_async(f, (5,)).get(30) == 10
    assert p.map_async(f, [1]).get(30) == [2]
    assert p.apply(lambda: os.environ.get("TAG")) == "set"
    assert p.apply(os.getpid) != os.getpid()   # not __main__'s: by reference
print("ok")
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_functions_defined_with_python_c(method):
    r = run_python(INTERACTIVE.replace("METHOD", repr(method)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


@pytest.mark.parametrize("method", START_METHODS)
def test_functions_read_from_stdin(method):
    # `python -` (a program piped in): its __file__ is "<stdin>", no file
    # the spawned template could run again.
    r = run_python("""
        import subprocess, sys
        src = sys.argv[1]
        r = subprocess.run([sys.executable, "-"], input=src, text=True,
                           capture_output=True, timeout=50)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        sys.exit(r.returncode)
    """, args=(INTERACTIVE.replace("METHOD", repr(method)),))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


# -- without cloudpickle --------------------------------------------------------

WITHOUT = """
import pickle, sys, threading
sys.modules["cloudpickle"] = None       # as if it were not installed
import cpool

HINT = "pip install cpool[cloudpickle]"

def ok(x):
    return x + 1

def check(call, f):
    try:
        pickle.dumps(f)
    except Exception as e:
        want = e
    try:
        call()
    except Exception as e:
        assert type(e) is type(want), (e, want)
        assert HINT in str(e) and str(want) in str(e), e
        assert type(e.__cause__) is type(want) and str(e.__cause__) == str(want), e
    else:
        raise AssertionError("no error")

def local_functions():
    k = 1
    def nested(x):
        return x * k
    return [lambda x: x + k, nested]

if __name__ == "__main__":
    with cpool.Pool(2, context={method}) as p:
        for f in [lambda x: x] + local_functions():
            check(lambda: p.apply(f, (1,)), f)
            assert p.apply(ok, (1,)) == 2
            check(lambda: p.apply_async(f, (1,)), f)
            check(lambda: p.map(f, [1]), f)
            check(lambda: p.map_async(f, [1]), f)
            check(lambda: p.starmap(f, [(1,)]), f)
            check(lambda: p.starmap_async(f, [(1,)]), f)
            check(lambda: p.imap(f, [1]), f)
            check(lambda: p.imap_unordered(f, [1]), f)
            assert p.map(ok, range(3)) == [1, 2, 3]
            assert list(p.imap(ok, range(3))) == [1, 2, 3]
        try:
            p.apply(ok, (threading.Lock(),))
        except TypeError as e:
            assert HINT not in str(e) and e.__cause__ is None, e
        else:
            raise AssertionError("a lock pickled")
        assert p.apply(ok, (1,)) == 2
    if {method} != "fork":
        f = lambda: None
        check(lambda: cpool.Pool(1, initializer=f, context={method}), f)
    # under fork the initializer is not pickled: any callable works
    init = (lambda x: None) if {method} == "fork" else ok
    with cpool.Pool(1, initializer=init, initargs=(1,), context={method}) as p:
        assert p.apply(ok, (1,)) == 2
    print("ok")
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_without_cloudpickle_the_error_says_how_to_get_it(method, tmp_path):
    assert run_scenario(WITHOUT, method=method, tmp_path=tmp_path) == "ok\n"


MAIN_FUNCTION = """
import cpool

def square(x):
    return x * x

def main():
    k = 3
    with cpool.Pool(2, context={method}, initializer=lambda: None) as p:
        assert p.map(square, range(4)) == [0, 1, 4, 9]
        assert p.apply(lambda x: x + k, (1,)) == 4
        assert list(p.imap(lambda x: -x, [1, 2])) == [-1, -2]
        # Nothing of __main__ can be missing in the workers: no check per call.
        assert p._main_gone is False
    print("ok")

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_a_script_whose_guard_only_calls_main(method, tmp_path):
    assert run_scenario(MAIN_FUNCTION, method=method, tmp_path=tmp_path) == "ok\n"


def test_the_names_a_spawned_main_binds():
    import ast
    from cpool._cloud import _bound
    tree = ast.parse("""
import os, a.b as c
from x import y as z
def f():
    q = 1
class C:
    pass
top = lambda: 1
for i in range(3):
    w = i
try:
    import numpy
except ImportError as err:
    numpy = None
if __name__ == "__main__":
    def g():
        pass
    h = 1
else:
    e = 2
with open("f") as fh:
    pass
""")
    outside = {"os", "c", "z", "f", "C", "top", "i", "w", "numpy", "err", "e", "fh"}
    assert set(_bound(tree.body)) == outside
    assert set(_bound(tree.body, guards=True)) == outside | {"g", "h"}
