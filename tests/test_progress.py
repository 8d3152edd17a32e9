"""progress= on map, map_async, starmap, starmap_async, imap and
imap_unordered: a callable gets (done, total) in items, growing to total,
from the thread that delivers; progress=True draws a bar on stderr (tqdm's,
or cpool's plain one when tqdm cannot be imported) that ends with a newline
on success, on a task's error, on Ctrl-C and on terminate, on a pipe and on
a terminal; a progress callable that raises loses no result; a call
without progress= gets the plain result classes (no cost).  Bars and
Ctrl-C run in fresh interpreters under a time limit."""
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import threading
import time

import pytest

import cpool
from cpool.imap import IMapIterator, IMapUnorderedIterator
from cpool.results import MapResult
from conftest import (START_METHODS, module_pool, python_env, run_python, run_scenario,
                      shutdown)
from tasks import T, add3, fail_on_three, identity, square

pool = module_pool(3)

N = 103   # items: chunks of 10 leave a short one (3)

try:
    import tqdm  # noqa: F401
    HAVE_TQDM = True
except ImportError:
    HAVE_TQDM = False

# The two bars: cpool's own (tqdm hidden from the snippet) and tqdm's.
BARS = [
    "plain",
    pytest.param("tqdm", marks=pytest.mark.skipif(not HAVE_TQDM, reason="tqdm not installed")),
]
HIDE_TQDM = 'import sys; sys.modules["tqdm"] = None  # cpool\'s plain bar\n'


def snippet(bar, body):
    """A fresh interpreter's source: `body` after cpool is imported, with
    tqdm hidden for the plain bar, and slow(x) to map."""
    return (HIDE_TQDM if bar == "plain" else "") + textwrap.dedent("""
        import sys, time, cpool
        def slow(x):
            time.sleep(0.02)
            if x == -1:
                raise ValueError("task failed", x)
            return x
    """) + textwrap.dedent(body)


def recorder():
    """A progress callable that records (done, total, thread ident)."""
    calls = []

    def progress(done, total):
        calls.append((done, total, threading.get_ident()))
    return progress, calls


def chunk_sizes(n, chunksize):
    return [min(chunksize, n - lo) for lo in range(0, n, chunksize)]


def check_counts(calls, total, n, chunksize):
    """Done counts grow by whole chunks, in items, and end at n."""
    dones = [c[0] for c in calls]
    assert dones == sorted(set(dones)), f"not increasing: {dones}"
    assert dones[-1] == n
    assert {c[1] for c in calls} == {total}
    steps = [b - a for a, b in zip([0] + dones, dones)]
    assert sorted(steps) == sorted(chunk_sizes(n, chunksize))


# -- the callable ------------------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 4, 10, 200])
@pytest.mark.parametrize("call", ["map", "starmap", "map_async", "starmap_async"])
def test_callable_counts_items_of_map(pool, call, chunksize):
    progress, calls = recorder()
    star = call.startswith("star")
    func, data = (add3, [(i, 1) for i in range(N)]) if star else (square, range(N))
    if call.endswith("_async"):
        got = getattr(pool, call)(func, data, chunksize, progress=progress).get(timeout=T)
    else:
        got = getattr(pool, call)(func, data, chunksize, progress=progress)
    assert got == ([i + 1 for i in range(N)] if star else [i * i for i in range(N)])
    check_counts(calls, N, N, chunksize)


@pytest.mark.parametrize("chunksize", [1, 4, 10])
@pytest.mark.parametrize("call", ["imap", "imap_unordered"])
def test_callable_counts_items_of_imap(pool, call, chunksize):
    progress, calls = recorder()
    got = list(getattr(pool, call)(square, range(N), chunksize, progress=progress))
    assert sorted(got) == [i * i for i in range(N)]
    check_counts(calls, N, N, chunksize)


@pytest.mark.parametrize("call", ["imap", "imap_unordered"])
def test_a_generator_has_no_total(pool, call):
    progress, calls = recorder()
    got = list(getattr(pool, call)(square, (i for i in range(N)), 4, progress=progress))
    assert sorted(got) == [i * i for i in range(N)]
    check_counts(calls, None, N, 4)


def test_map_of_a_generator_has_a_total(pool):
    # map reads a generator into a list first (as multiprocessing does).
    progress, calls = recorder()
    assert pool.map(square, (i for i in range(N)), 10, progress=progress) == \
        [i * i for i in range(N)]
    check_counts(calls, N, N, 10)


def test_empty_input(pool):
    progress, calls = recorder()
    assert pool.map(square, [], progress=progress) == []
    assert list(pool.imap(square, [], progress=progress)) == []
    assert list(pool.imap_unordered(square, iter([]), progress=progress)) == []
    assert calls == []   # nothing was delivered (callbacks are not called either)


def test_called_from_the_delivering_thread(pool):
    """map_async with a callback: results are delivered on cpool's collector
    thread (callbacks never run in a caller's get()), and so is every
    progress call.  map() and imap: the caller's thread collects for itself
    while it waits, so the calls come from it, or from the collector thread
    for what arrived while the caller was not waiting; never another."""
    progress, calls = recorder()
    cb_thread = []
    r = pool.map_async(square, range(N), 3, callback=lambda v: cb_thread.append(
        threading.get_ident()), progress=progress)
    assert r.get(timeout=T) == [i * i for i in range(N)]
    collector = cb_thread[0]
    assert collector == collector_thread(pool) != threading.get_ident()
    assert {c[2] for c in calls} == {collector}
    check_counts(calls, N, N, 3)

    for run in (lambda p: pool.map(square, range(N), 3, progress=p),
                lambda p: list(pool.imap(square, range(N), 3, progress=p)),
                lambda p: list(pool.imap_unordered(square, range(N), 3, progress=p))):
        progress, calls = recorder()
        run(progress)
        check_counts(calls, N, N, 3)
        assert {c[2] for c in calls} <= {threading.get_ident(), collector}


def collector_thread(pool):
    """The ident of the pool's collector thread: where callbacks run."""
    where = []
    pool.apply_async(square, (1,), callback=lambda v: where.append(
        threading.get_ident())).get(timeout=T)
    return where[0]


def test_calls_from_a_caller_thread_that_is_not_main(pool):
    """A map called in another thread: the calls come from that thread
    (collecting while it waits) or from the collector thread."""
    collector = collector_thread(pool)
    seen = []

    def in_thread():
        progress, calls = recorder()
        pool.map(square, range(N), 5, progress=progress)
        seen.append((threading.get_ident(), calls))
    t = threading.Thread(target=in_thread)
    t.start()
    t.join(T)
    assert not t.is_alive()
    ident, calls = seen[0]
    check_counts(calls, N, N, 5)
    assert {c[2] for c in calls} <= {ident, collector}
    assert threading.get_ident() not in {c[2] for c in calls}


@pytest.mark.parametrize("method", START_METHODS)
def test_callable_under_each_start_method(method):
    p = cpool.Pool(2, context=method)
    try:
        progress, calls = recorder()
        assert p.map(square, range(N), 10, progress=progress) == [i * i for i in range(N)]
        check_counts(calls, N, N, 10)
        progress, calls = recorder()
        assert sorted(p.imap_unordered(square, range(N), 4, progress=progress)) == \
            [i * i for i in range(N)]
        check_counts(calls, N, N, 4)
    finally:
        shutdown(p)


def test_a_raising_progress_callable_loses_no_result(pool, capfd):
    """Reported as a raising callback is (stderr, with its traceback), once
    per call, and not called again for that call; the results are all there
    and the pool goes on."""
    calls = []

    def bad(done, total):
        calls.append(done)
        raise RuntimeError(f"progress boom {done}")

    assert pool.map(square, range(N), 1, progress=bad) == [i * i for i in range(N)]
    assert len(calls) == 1
    assert sorted(pool.imap_unordered(square, range(N), 2, progress=bad)) == \
        [i * i for i in range(N)]
    r = pool.map_async(square, range(N), 3, callback=lambda v: None, progress=bad)
    assert r.get(timeout=T) == [i * i for i in range(N)]
    assert len(calls) == 3
    err = capfd.readouterr().err
    assert err.count("Exception in cpool progress callable") == 3
    assert err.count("RuntimeError: progress boom") == 3
    assert pool.map(square, range(10)) == [i * i for i in range(10)]


def test_ctrl_c_inside_the_progress_callable_loses_nothing():
    """A Ctrl-C that lands in the callable, in the caller's thread (a
    KeyboardInterrupt raised there): the caller gets it, the outcome being
    delivered is delivered again by the collector thread (see
    ApplyResult._set), counted once; the call then completes whole."""
    out = run_scenario("""
        import threading, cpool
        from tasks import square
        with cpool.Pool(2) as pool:
            for call in ("map", "imap"):
                dones, fired = [], []
                def progress(done, total):
                    dones.append(done)
                    if done >= 40 and not fired and \\
                            threading.current_thread() is threading.main_thread():
                        fired.append(done)
                        raise KeyboardInterrupt
                got = []
                if call == "map":
                    r = pool.map_async(square, range(103), 4, progress=progress)
                    try:
                        r.get(30)
                    except KeyboardInterrupt:
                        print("interrupted")
                    got = r.get(30)
                else:
                    it = pool.imap(square, range(103), 4, progress=progress)
                    while True:
                        try:
                            got.extend(it)
                            break
                        except KeyboardInterrupt:
                            print("interrupted")
                print(call, got == [i * i for i in range(103)],
                      dones == sorted(set(dones)), dones[-1])
    """, timeout=30)
    lines = out.split("\n")
    # The interrupt fires only if a delivery ran the callable in the main
    # thread past 40 items; it nearly always does (the caller collects).
    assert "map True True 103" in lines and "imap True True 103" in lines, out


def test_a_task_error(pool):
    """map: the error ends the call (as multiprocessing's); the failed chunk
    counts.  imap with chunksize 1 goes on past a failed item, which counts."""
    progress, calls = recorder()
    with pytest.raises(KeyError):
        pool.map(fail_on_three, range(N), 1, progress=progress)
    dones = [c[0] for c in calls]
    assert dones == sorted(set(dones)) and dones[-1] <= N
    progress, calls = recorder()
    it = pool.imap(fail_on_three, range(10), progress=progress)
    assert [next(it, None) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(KeyError):
        next(it)
    assert list(it) == [i * 10 for i in range(4, 10)]
    assert [c[0] for c in calls] == list(range(1, 11))


def die_once(runs, i):
    """Kills its worker the first time item i runs (counted in shared memory)."""
    with runs.get_lock():
        runs[i] += 1
        first = runs[i] == 1
    if first and i % 25 == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_a_chunk_run_again_counts_once():
    """retries=: a chunk whose worker died runs again and is delivered once,
    so its items count once; the count still ends at the total."""
    p = cpool.Pool(2, retries=2)
    try:
        runs = cpool.Array("i", N)
        progress, calls = recorder()
        assert p.starmap(die_once, [(runs, i) for i in range(N)], 4, progress=progress) == \
            list(range(N))
        check_counts(calls, N, N, 4)
        assert p.stats().retried >= 1
    finally:
        shutdown(p)


def test_no_progress_is_the_plain_classes(pool):
    """The no-cost guarantee: without progress= (None or False) a call gets
    the classes it always got, whose delivery does nothing for progress."""
    for progress in (None, False):
        r = pool.map_async(identity, range(10), progress=progress)
        assert type(r) is MapResult and r.get(timeout=T) == list(range(10))
        assert type(pool.imap(identity, [], progress=progress)) is IMapIterator
        assert type(pool.imap_unordered(identity, [], progress=progress)) is \
            IMapUnorderedIterator
    r = pool.map_async(identity, range(10), progress=lambda d, t: None)
    assert isinstance(r, MapResult) and r.get(timeout=T) == list(range(10))
    assert isinstance(pool.imap(identity, [], progress=print), IMapIterator)


CALLS = {
    "map": lambda p, **kw: p.map(square, [1], **kw),
    "map_async": lambda p, **kw: p.map_async(square, [1], **kw),
    "starmap": lambda p, **kw: p.starmap(add3, [(1,)], **kw),
    "starmap_async": lambda p, **kw: p.starmap_async(add3, [(1,)], **kw),
    "imap": lambda p, **kw: p.imap(square, [1], **kw),
    "imap_unordered": lambda p, **kw: p.imap_unordered(square, [1], **kw),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_progress_is_checked_as_the_other_arguments(pool, call):
    with pytest.raises(TypeError, match="progress must be"):
        CALLS[call](pool, progress=1)
    with pytest.raises(TypeError, match="progress must be"):
        CALLS[call](pool, progress="yes")
    with pytest.raises(TypeError):   # keyword-only
        getattr(pool, call)(square, [1], 1, None, None, True)
    closed = cpool.Pool(1)
    try:
        closed.close()
        # A pool not running says so first, whatever progress is (as it does
        # whatever chunksize is).
        for progress in (None, True, print, 1):
            with pytest.raises(ValueError, match="Pool not running"):
                CALLS[call](closed, progress=progress)
    finally:
        closed.terminate()
        closed.join()


# -- the bar on a pipe ----------------------------------------------------------

def stderr_of(r):
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stderr


def last_drawn(text):
    """The bar as last drawn: the last line, after its last carriage return."""
    assert text.endswith("\n"), repr(text[-200:])
    return text[:-1].rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]


@pytest.mark.parametrize("bar", BARS)
def test_bar_on_a_pipe(bar):
    r = run_python(snippet(bar, """
        with cpool.Pool(2) as pool:
            print(pool.map(slow, range(40), 3, progress=True) == list(range(40)))
            print(sum(pool.imap_unordered(slow, (i for i in range(30)), progress=True)))
            print(pool.starmap(max, [(i, 0) for i in range(20)], progress=True)[-1])
    """), timeout=30, keep_cr=True)
    assert r.stdout.split() == ["True", str(sum(range(30))), "19"]
    err = stderr_of(r)
    lines = err.split("\n")
    assert len(lines) == 4 and lines[-1] == "", repr(err)   # three bars, each ended
    finals = [line.rsplit("\r", 1)[-1] for line in lines[:3]]
    assert "40/40" in finals[0] and "100%" in finals[0]
    assert re.match(r"30(it| it)", finals[1]), finals[1]   # no total: a count
    assert "20/20" in finals[2]
    if bar == "plain":
        assert finals[0].startswith("100%|" + "#" * 30 + "| 40/40 [00:0")
        assert finals[0].endswith(" it/s]")


@pytest.mark.parametrize("bar", BARS)
def test_bar_on_a_task_error_ends_before_the_traceback(bar):
    """map and imap: the bar is finished (a newline) before the error's
    traceback; nothing is drawn after it."""
    for call in ("pool.map(slow, [*range(20), -1, *range(20)], 1, progress=True)",
                 "for _ in pool.imap(slow, [*range(20), -1, *range(20)], progress=True): pass"):
        r = run_python(snippet(bar, f"""
            with cpool.Pool(2) as pool:
                {call}
        """), timeout=30, keep_cr=True)
        assert r.returncode == 1
        # The bar's line (its redraws), its newline, then the traceback
        # (the task's own first, its RemoteTraceback) and nothing drawn.
        bar_text, _, rest = r.stderr.partition("\n")
        assert re.search(r"\| *\d+/41", bar_text.rsplit("\r", 1)[-1]), repr(bar_text)
        assert "Traceback" not in bar_text and "Traceback" in rest
        assert "\r" not in rest, repr(rest)
        assert rest.rstrip().endswith("ValueError: ('task failed', -1)")


@pytest.mark.parametrize("bar", BARS)
def test_bar_on_terminate(bar):
    """terminate() (a with block left by an exception, or a call) ends the
    bars of unfinished calls, a map_async's and an imap's left early."""
    r = run_python(snippet(bar, """
        pool = cpool.Pool(2)
        r = pool.map_async(slow, range(200), 1, progress=True)
        time.sleep(0.5)
        pool.terminate()
        print(type(r._value).__name__, flush=True)
        pool = cpool.Pool(2)
        for x in pool.imap(slow, range(200), progress=True):
            if x == 10:
                break
        pool.terminate()
        pool.join()
        print("terminated")
    """), timeout=30, keep_cr=True)
    assert r.stdout.split() == ["PoolTerminatedError", "terminated"]
    err = stderr_of(r)
    lines = err.split("\n")
    assert len(lines) == 3 and lines[-1] == "", repr(err)
    assert re.search(r"\| *\d+/200", lines[0].rsplit("\r", 1)[-1])
    assert "200/200" not in lines[0]


def test_bar_without_stderr_is_nothing():
    r = run_python("""
        import sys, cpool
        sys.stderr = None
        with cpool.Pool(2) as pool:
            print(pool.map(abs, range(-5, 5), progress=True))
    """, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == str(list(map(abs, range(-5, 5))))


def test_plain_bar_redraws_at_most_ten_times_a_second():
    r = run_python(snippet("plain", """
        with cpool.Pool(2) as pool:
            t0 = time.monotonic()
            pool.map(slow, range(100), 1, progress=True)
            print(time.monotonic() - t0)
    """), timeout=30, keep_cr=True)
    err = stderr_of(r)
    seconds = float(r.stdout)
    draws = err.count("\r")
    # 100 items of 20 ms on 2 workers: about 1 s, so about 10 redraws, and
    # the first and the last; 100 without the limit.
    assert 3 <= draws <= seconds * 10 + 3, (seconds, err)
    assert last_drawn(err).startswith("100%|")


# -- the bar on a terminal ----------------------------------------------------------

def run_in_pty(source, interrupt_at=None, timeout=30):
    """Run `source` in a fresh interpreter whose stdin, stdout and stderr
    are a terminal (a pty, 100 columns), in a process group of its own;
    with `interrupt_at` (a regex), SIGINT that group once the output matches
    it, as Ctrl-C in a terminal does.  (exit status, output with the
    terminal's \\r\\n made \\n); the group is killed on timeout."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(source)],
                                stdin=slave, stdout=slave, stderr=slave,
                                env=python_env(), cwd=tempfile.gettempdir(),
                                start_new_session=True)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    interrupted = interrupt_at is None
    try:
        while True:
            exited = proc.poll() is not None
            ready, _, _ = select.select([master], [], [], 0.2 if exited else 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:   # EIO: every writer has closed the terminal
                    data = b""
                out += data
                if data:
                    if not interrupted and re.search(interrupt_at, out):
                        os.killpg(proc.pid, signal.SIGINT)
                        interrupted = True
                    continue
            if exited:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"did not finish within {timeout} s; output:\n{out!r}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    assert interrupted, f"the output never matched {interrupt_at!r}: {out!r}"
    return proc.returncode, out.decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.mark.parametrize("bar", BARS)
def test_bar_on_a_terminal(bar):
    status, out = run_in_pty(snippet(bar, """
        assert sys.stderr.isatty()
        with cpool.Pool(2) as pool:
            r = pool.map(slow, range(60), 1, progress=True)
            print("mapped", r == list(range(60)))
    """))
    assert status == 0, out
    drawn, _, after = out.partition("\nmapped True\n")
    assert _ and after == "", repr(out)
    final = drawn.rsplit("\r", 1)[-1]
    assert "60/60" in final and "100%" in final, repr(final)
    assert drawn.count("\r") >= 2   # drawn, then redrawn


@pytest.mark.parametrize("call", ["map", "imap"])
@pytest.mark.parametrize("bar", BARS)
def test_ctrl_c_on_a_terminal_leaves_no_garbage(bar, call):
    """Ctrl-C mid-map: the bar's line is finished before the
    KeyboardInterrupt's traceback, nothing is drawn after it, and the
    process exits (by SIGINT, as Python does on an uncaught Ctrl-C)."""
    body = {"map": "pool.map(slow, range(400), 1, progress=True)",
            "imap": "for _ in pool.imap(slow, range(400), progress=True): pass"}[call]
    status, out = run_in_pty(snippet(bar, f"""
        with cpool.Pool(2) as pool:
            {body}
        print("not interrupted")
    """), interrupt_at=rb"\| *[1-9]\d*/400")
    assert status in (-signal.SIGINT, 128 + signal.SIGINT), (status, out)
    drawn, tb, rest = out.partition("Traceback (most recent call last):")
    assert tb, out
    assert drawn.endswith("\n") and drawn.count("\n") == 1, repr(drawn)
    assert re.search(r"\| *[1-9]\d*/400", drawn.rsplit("\r", 1)[-1]), repr(drawn)
    assert "\r" not in rest, repr(rest)
    assert rest.rstrip("\n").endswith("\nKeyboardInterrupt"), repr(rest[-300:])
    assert "not interrupted" not in out
