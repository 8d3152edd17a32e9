"""cpool types as the stdlib does (issue 14): ``import cpool as mp`` must not
change what a type checker says about a program written for
``multiprocessing``.

One mypy run (strict, a fresh cache) checks three files:

* tests/typing_client.py, a client that calls every public name of cpool and
  hands cpool's objects to code annotated with multiprocessing's types: no
  error.  (test_the_typed_client_runs runs it too: every call typed there is
  a real one.)
* REVEAL, written once with ``import multiprocessing as mp`` and once with
  ``import cpool as mp``: every ``reveal_type`` gives the same type in both,
  line by line, except the lines marked ``# cpool: T``, where cpool's type
  is T (cpool's own classes, among them the result objects and imap
  iterators, subclasses of multiprocessing's that are also awaitable and
  async-iterable, and typeshed's errors cpool's stubs do not copy).

mypy finds cpool in the repository (the working directory): an editable
install (PEP 660) hides the package from mypy, as the README says.  mypy is
a test extra: a missing mypy fails, never skips.
"""
import os
import re

import pytest

from conftest import REPO_ROOT, run_python

MYPY_CONFIG = """\
[mypy]
cache_dir = {cache}
"""

# reveal_type of every public call, as a program for multiprocessing writes
# it; "{mp}" is the module imported as mp.
REVEAL = """\
import ctypes
import {mp} as mp
import {mp}.sharedctypes


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def main() -> None:
    reveal_type(mp.Pool(2))  # cpool: cpool.pool.Pool
    with mp.Pool(2, None, (), None) as p:
        reveal_type(p.apply(square, (1,)))
        reveal_type(p.apply(add, (), {{"x": 1, "y": 2}}))
        r = p.apply_async(square, (1,), {{}}, print, print)
        reveal_type(r)  # cpool: cpool.results.ApplyResult[int]
        reveal_type(r.get(1.0))
        reveal_type(r.wait)
        reveal_type(r.ready())
        reveal_type(r.successful())
        reveal_type(p.map(square, [1]))
        reveal_type(p.map(square, range(3), 2))
        reveal_type(p.map_async(square, [1], 1, print, print))  # cpool: cpool.results.MapResult[int]
        reveal_type(p.map_async(square, [1]).get())
        reveal_type(p.starmap(add, [(1, 2)]))
        reveal_type(p.starmap_async(add, [(1, 2)], None, print, print))  # cpool: cpool.results.ApplyResult[list[int]]
        reveal_type(p.imap(square, [1]))  # cpool: cpool.imap.IMapIterator[int]
        reveal_type(p.imap(square, [1], 2))  # cpool: cpool.imap.IMapIterator[int]
        reveal_type(p.imap_unordered(square, [1], chunksize=2))  # cpool: cpool.imap.IMapIterator[int]
        reveal_type(next(p.imap(square, [1])))
        reveal_type(p.imap(square, [1]).next(1.0))
        reveal_type(iter(p.imap_unordered(square, [1])))  # cpool: cpool.imap.IMapIterator[int]
        reveal_type(p.close)
        reveal_type(p.terminate)
        reveal_type(p.join)
        reveal_type(p.__exit__)
    reveal_type(mp.Value("i", 0))
    reveal_type(mp.Value(ctypes.c_double, 0.5))
    reveal_type(mp.Value(ctypes.c_int, 0).value)
    reveal_type(mp.Value(ctypes.c_int, 0).get_obj())
    reveal_type(mp.Value(ctypes.c_int, 0).get_lock())
    reveal_type(mp.Value(ctypes.c_int, 0, lock=False))  # cpool: ctypes.c_int
    reveal_type(mp.Array("i", 3))
    reveal_type(mp.Array(ctypes.c_int, 3))
    reveal_type(mp.Array(ctypes.c_int, [1, 2])[0])
    reveal_type(mp.Array(ctypes.c_int, 3)[:])
    reveal_type(mp.Array(ctypes.c_char, 3))
    reveal_type(mp.Array(ctypes.c_char, 3).value)
    reveal_type(mp.Array(ctypes.c_int, 3, lock=False))  # cpool: _ctypes.Array[ctypes.c_int]
    reveal_type(mp.RawValue(ctypes.c_int))
    reveal_type(mp.RawValue("i", 1))
    reveal_type(mp.RawArray(ctypes.c_int, 3))
    reveal_type(mp.RawArray("d", [1.0]))
    reveal_type({mp}.sharedctypes.Value("i", 0))
    reveal_type({mp}.sharedctypes.Value(ctypes.c_int, 0, lock=False))
    reveal_type({mp}.sharedctypes.Array(ctypes.c_double, 2))
    reveal_type({mp}.sharedctypes.synchronized(ctypes.c_int(0)))
    reveal_type({mp}.sharedctypes.copy(ctypes.c_int(0)))
    reveal_type(mp.Lock())  # cpool: cpool.sharedctypes.Lock
    reveal_type(mp.RLock())  # cpool: cpool.sharedctypes.RLock
    reveal_type(mp.Lock().acquire(True, 1.0))
    reveal_type(mp.get_context())
    reveal_type(mp.get_context("spawn"))
    reveal_type(mp.get_context("fork"))
    reveal_type(mp.get_context("forkserver"))
    reveal_type(mp.get_context("fork").Pool(2))
    reveal_type(mp.get_context("spawn").Pool(2).map(square, [1]))
    reveal_type(mp.get_context("spawn").Process)
    reveal_type(mp.TimeoutError)  # cpool: def (*args: object) -> cpool.errors.TimeoutError
    reveal_type(mp.ProcessError)
    reveal_type(mp.AuthenticationError)
    reveal_type(mp.BufferTooShort)
    reveal_type(mp.cpu_count())
    reveal_type(mp.current_process())
    reveal_type(mp.parent_process())
    reveal_type(mp.active_children())
    reveal_type(mp.Process)
    reveal_type(mp.Process(target=print).start)
    reveal_type(mp.Queue())
    reveal_type(mp.SimpleQueue())
    reveal_type(mp.JoinableQueue())
    reveal_type(mp.Manager())
    reveal_type(mp.Event())
    reveal_type(mp.Semaphore(2))
    reveal_type(mp.BoundedSemaphore())
    reveal_type(mp.Condition())
    reveal_type(mp.Barrier(2))
    reveal_type(mp.Pipe())
    reveal_type(mp.get_start_method())
    reveal_type(mp.get_all_start_methods())
    reveal_type(mp.set_start_method)
    reveal_type(mp.freeze_support)
    reveal_type(mp.get_logger())
    reveal_type(mp.log_to_stderr)
    reveal_type(mp.set_executable)
    reveal_type(mp.set_forkserver_preload)
    reveal_type(mp.allow_connection_pickling)
"""

LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<text>.*)$")
REVEALED = re.compile(r'^Revealed type is "(?P<type>.*)"$')


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    """One strict mypy run over the client and both REVEAL files: {path:
    [(line, kind, text)]}, the paths as given (REVEAL's by module name)."""
    try:
        import mypy  # noqa: F401
    except ImportError as e:  # pragma: no cover - loud on purpose
        raise ImportError("the typing checks need mypy: pip install -e '.[test]'") from e
    tmp = tmp_path_factory.mktemp("typing")
    config = tmp / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(cache=tmp / "cache"))
    files = {"client": os.path.join("tests", "typing_client.py")}
    for mp in ("multiprocessing", "cpool"):
        path = tmp / f"reveal_{mp}.py"
        path.write_text(REVEAL.format(mp=mp))
        files[mp] = str(path)
    proc = run_python(module="mypy", timeout=50, cwd=REPO_ROOT,
                      args=["--strict", "--config-file", config, *files.values()])
    out = {name: [] for name in files}
    others = []
    by_path = {os.path.normpath(p): name for name, p in files.items()}
    for raw in proc.stdout.splitlines():
        m = LINE.match(raw)
        if m is None:
            continue
        name = by_path.get(os.path.normpath(m["path"]))
        if name is None:
            others.append(raw)     # an error in a stub, or elsewhere
        else:
            out[name].append((int(m["line"]), m["kind"], m["text"]))
    return out, others, proc


def test_mypy_strict_passes_on_a_client_of_every_public_name(mypy_run):
    out, others, proc = mypy_run
    errors = [f"typing_client.py:{n}: {text}" for n, kind, text in out["client"]
              if kind == "error"]
    assert not errors and not others, (
        "mypy --strict:\n" + "\n".join(errors + others) + "\n" + proc.stderr)


def test_the_typed_client_runs():
    proc = run_python("import typing_client; typing_client.main()", timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "typing_client: ok" in proc.stdout


def _revealed(lines):
    types = {}
    for n, kind, text in lines:
        m = REVEALED.match(text)
        if kind == "note" and m:
            types[n] = m["type"]
    return types


def test_reveal_type_is_multiprocessings(mypy_run):
    out, _, proc = mypy_run
    problems = []
    for mp in ("multiprocessing", "cpool"):
        problems += [f"line {n}: mypy --strict with {mp}: {text}"
                     for n, kind, text in out[mp] if kind == "error"]
    source = REVEAL.format(mp="cpool").splitlines()
    expected_lines = [i + 1 for i, line in enumerate(source) if "reveal_type(" in line]
    mine, theirs = _revealed(out["cpool"]), _revealed(out["multiprocessing"])
    assert sorted(theirs) == expected_lines, proc.stdout + proc.stderr
    for n in expected_lines:
        marker = source[n - 1].partition("# cpool: ")[2]
        want = marker or theirs[n]
        got = mine.get(n, "(nothing revealed)")
        if got != want:
            problems.append(f"line {n}: {source[n - 1].strip()}\n"
                            f"    multiprocessing: {theirs[n]}\n"
                            f"    cpool:           {got}"
                            + (f"\n    expected:        {want}" if marker else ""))
        elif marker and theirs[n] == want:
            problems.append(f"line {n}: the same as multiprocessing now: drop its marker")
    assert not problems, "reveal_type, cpool against multiprocessing:\n" + "\n".join(problems)
