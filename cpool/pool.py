"""cpool.Pool: the multiprocessing.Pool API over the machinery in cpool._cpool.

This module is the public face and the per-call glue: argument checks,
chunk sizes, and the result objects that the C collector thread fills in by
calling ``job._set(index, status, value)`` once per task (a chunk of items
for the map family).  Forking, queueing, running and collecting are C.
"""
import collections
import itertools
import os
import pickle
import sys
import threading
from _thread import allocate_lock as _allocate_lock
from time import monotonic as _monotonic
import traceback
import warnings
import weakref

import multiprocessing

from . import _cpool

__all__ = [
    "Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
    "IMapUnorderedIterator", "TimeoutError", "WorkerLostError",
    "BrokenPoolError", "InitializerError", "PoolTerminatedError",
    "TaskAbortedError", "ResultUnpicklingError",
]

# The same state names as multiprocessing.pool, so code (and CPython's tests)
# comparing pool._state with multiprocessing.pool.RUN keeps working.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

ST_OK, ST_ERR, ST_LOCAL = _cpool.ST_OK, _cpool.ST_ERR, _cpool.ST_LOCAL
ST_LOST, ST_TERMINATED, ST_INITFAIL, ST_UNPICKLE = (
    _cpool.ST_LOST, _cpool.ST_TERMINATED, _cpool.ST_INITFAIL, _cpool.ST_UNPICKLE)

# How many chunks an imap reads ahead of its consumer, per worker.
IMAP_WINDOW_PER_WORKER = 4


class TimeoutError(multiprocessing.TimeoutError):
    """get() or next() ran out of time; the result may still arrive."""


class WorkerLostError(RuntimeError):
    """The worker running a task died before answering (killed, crashed,
    os._exit).  Only the tasks that worker held fail; the pool replaces it."""

    def __init__(self, message, pid=None, exitcode=None, signal=None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self):
        return (type(self), (self.args[0], self.pid, self.exitcode, self.signal))


class BrokenPoolError(RuntimeError):
    """The pool cannot run tasks any more (a worker could not be started):
    every pending and later call fails with this error; its __cause__ says
    why."""


class InitializerError(BrokenPoolError):
    """The pool's initializer raised in a worker: the pool is broken, and
    every pending and later call fails with this error (its __cause__ is the
    initializer's exception).  multiprocessing would respawn workers forever."""


class TaskAbortedError(RuntimeError):
    """The task raised a BaseException that is not an Exception (SystemExit,
    KeyboardInterrupt, GeneratorExit...).  Raising that in the caller would
    exit or interrupt it, so this is raised instead, with the original as
    __cause__.  The worker goes on (multiprocessing's would exit, and the
    task's result would never come)."""


class ResultUnpicklingError(pickle.UnpicklingError):
    """A task's result, or the exception it raised, could not be unpickled
    in the parent; __cause__ is why.  The pool goes on."""


class PoolTerminatedError(RuntimeError):
    """The pool was terminated (or its template process died) before the
    task finished."""


def _remote_traceback(text):
    from multiprocessing.pool import RemoteTraceback
    return RemoteTraceback(text)


def _describe_status(wstatus):
    """(exitcode, signal, words) for a waitpid status."""
    if os.WIFSIGNALED(wstatus):
        import signal
        sig = os.WTERMSIG(wstatus)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return -sig, sig, f"killed by signal {name}"
    code = os.WEXITSTATUS(wstatus)
    return code, None, f"exited with code {code}"


def _outcome(job, idx, status, value):
    """(success, value or exception) of one task's outcome."""
    if status == ST_OK:
        return True, value
    if status == ST_ERR:
        exc, tb = value
        if tb is not None:
            exc.__cause__ = _remote_traceback(tb)
        if not isinstance(exc, Exception):
            err = TaskAbortedError(f"task {idx} of job {job} raised "
                                   f"{type(exc).__name__}{exc.args!r}")
            err.__cause__ = exc
            return False, err
        return False, exc
    if status == ST_UNPICKLE:
        why, was_error = value
        what = "the exception raised by" if was_error else "the result of"
        err = ResultUnpicklingError(
            f"could not unpickle {what} task {idx} of job {job}: {why!r}")
        err.__cause__ = why
        return False, err
    if status == ST_LOCAL:
        return False, value
    if status == ST_LOST:
        pid, wstatus = value
        exitcode, sig, words = _describe_status(wstatus)
        return False, WorkerLostError(
            f"worker {pid} {words} while running task {idx} of job {job}",
            pid, exitcode, sig)
    if status == ST_TERMINATED:
        return False, PoolTerminatedError(
            "the pool was terminated before this task finished")
    if status == ST_INITFAIL:
        return False, _initializer_error(value)
    return False, SystemError(f"cpool: unknown status {status}")


def _initializer_error(broken):
    exc, tb, initializer = broken
    if tb is not None:
        exc.__cause__ = _remote_traceback(tb)
    if initializer:
        err = InitializerError("the pool's initializer raised in a worker; "
                               "the pool is broken")
    else:
        err = BrokenPoolError("cpool could not start a worker process; "
                              "the pool is broken")
    err.__cause__ = exc
    return err


def _call_back(fn, arg):
    """Run a user callback; one that raises is reported, as threading
    reports an uncaught exception, and never stops later results."""
    try:
        fn(arg)
    except BaseException:
        print(f"Exception in cpool callback {fn!r}:", file=sys.stderr)
        traceback.print_exc()


_job_counter = itertools.count(1)


class ApplyResult:
    """The result of apply_async (multiprocessing.pool.ApplyResult)."""

    def __init__(self, cache, callback, error_callback, core=None):
        # A bare lock, held until the outcome is in, is all the event we need
        # (threading.Event is a Condition and a Lock: several times the cost
        # for each of a hundred thousand apply_async calls).
        self._core = core
        # Callbacks run on cpool's collector thread, never inside a caller's
        # get() that collects for itself: such outcomes are left to it.
        self._defer = callback is not None or error_callback is not None
        self._done = _allocate_lock()
        self._done.acquire()
        self._ready = False
        self._job = next(_job_counter)
        self._cache = cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None
        self._released = False
        cache[self._job] = self

    def ready(self):
        return self._ready

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        if self._ready:
            return
        if self._core is not None:
            # Collect in this thread while waiting: the result comes straight
            # from the worker's ring, not through the collector thread.
            deadline = None if timeout is None else _monotonic() + timeout
            if _collect_until(self._core, lambda: self._ready, deadline):
                return
            if deadline is not None:
                timeout = deadline - _monotonic()
        if timeout is None:
            with self._done:        # released for every other waiter too,
                pass                # even if Ctrl-C lands here
        elif timeout > 0 and self._done.acquire(True, timeout):
            self._done.release()

    def get(self, timeout=None):
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _abandon(self):
        self._cache.pop(self._job, None)

    def _complete(self):
        """The outcome is in and its callback has run: wake the waiters and
        leave the cache, each step once, however often this is called."""
        self._ready = True
        if not self._released:
            self._released = True
            self._done.release()
        self._cache.pop(self._job, None)

    def _finish(self):
        if self._success:
            if self._callback is not None:
                _call_back(self._callback, self._value)
        elif self._error_callback is not None:
            _call_back(self._error_callback, self._value)
        self._complete()

    # An outcome may be delivered twice.  A thread that collects for itself
    # while it waits runs _set, and if it is the main thread a Ctrl-C can
    # land inside; cpool's collector thread (where no signal handler runs)
    # then delivers the same outcome again.  Signal handlers run only at
    # calls and loop edges, so the _set methods change their state in
    # call-free steps and skip what an interrupted delivery already did.
    # (Outcomes with callbacks are only ever delivered by the collector.)

    def _set(self, idx, status, value):
        if self._ready:
            self._complete()  # a repeat: finish what was interrupted
            return
        if status == ST_OK:
            self._success, self._value = True, value
        else:
            self._success, self._value = _outcome(self._job, idx, status, value)
        self._finish()

    __class_getitem__ = classmethod(lambda cls, item: cls)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of map_async/starmap_async: one list, filled chunk by chunk;
    the first failing chunk fails it (as multiprocessing does)."""

    def __init__(self, cache, chunksize, length, callback, error_callback, core=None):
        super().__init__(cache, callback, error_callback, core)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._last = -1  # the chunk delivered last (see ApplyResult._set)
        if chunksize <= 0:
            self._number_left = 0
            self._complete()
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, idx, status, value):
        if self._ready:
            self._complete()  # a repeat, or a chunk after a failed one
            return
        if idx != self._last:
            if status == ST_OK:
                lo = idx * self._chunksize
                self._value[lo:lo + self._chunksize] = value
            else:
                ok, err = _outcome(self._job, idx, status, value)
                self._success, self._value = ok, err
            self._last = idx
            self._number_left -= 1
        if self._number_left == 0 or not self._success:
            self._finish()


class IMapIterator:
    """The iterator of imap: results in input order.  The input is read
    lazily, a bounded window of chunks ahead of the consumer, so an endless
    generator works (multiprocessing reads it all first)."""

    _ordered = True
    _defer = False

    def __init__(self, pool, func, iterable, chunksize, star):
        self._pool = weakref.ref(pool)
        self._core = pool._core
        self._cache = pool._cache
        # `with self._lock` rather than `with self._cond`: the same lock,
        # without Condition's Python-level __enter__/__exit__ per item.
        self._lock = _allocate_lock()
        self._cond = threading.Condition(self._lock)
        self._feed_lock = threading.Lock()
        self._job = next(_job_counter)
        self._chunksize = chunksize
        self._star = star
        self._window = max(2, IMAP_WINDOW_PER_WORKER * pool._processes)
        self._blob = self._core.func_blob(func)
        self._input = iter(iterable)
        self._submitted = 0      # chunks read from the input and queued
        self._delivered = 0      # chunks whose outcome arrived
        self._consumed = 0       # chunks the consumer has taken
        self._length = None      # total chunks, once the input is exhausted
        # Outcomes not yet taken, by chunk index (imap) or by arrival
        # number _head.._tail-1 (imap_unordered): dict stores, which a
        # signal handler cannot interrupt half-way (see ApplyResult._set).
        self._ready = {}
        self._head = self._tail = 0
        self._last = -1
        self._buf = collections.deque()
        self._sleepers = 0       # consumers waiting on _cond
        self._cache[self._job] = self
        pool._lazy.add(self)
        self._feed()

    def __iter__(self):
        return self

    # -- feeding (the consumer's thread, or join()) --

    def _feed(self, everything=False):
        """Read input ahead of the consumer, up to the window.  The window is
        refilled once it is half empty, a batch of chunks in one submission:
        one lock, one dispatch and one wake-up per batch, not per chunk."""
        if not everything and (self._length is not None or
                               self._submitted - self._consumed > self._window // 2):
            return  # the common case, checked again under the lock below
        with self._feed_lock:
            if self._length is not None:
                return
            if not everything and self._submitted - self._consumed > self._window // 2:
                return
            while self._length is None:
                room = self._window - (self._submitted - self._consumed)
                if not everything and room <= 0:
                    return
                chunks, stop = [], None
                while len(chunks) < (64 if everything else room):
                    try:
                        chunk = list(itertools.islice(self._input, self._chunksize))
                    except BaseException as e:
                        stop = e
                        break
                    if not chunk:
                        stop = StopIteration
                        break
                    chunks.append(chunk)
                if chunks and not self._submit(chunks):
                    return
                if stop is StopIteration:
                    self._end_input(self._submitted)
                elif stop is not None:
                    idx = self._submitted
                    self._end_input(idx + 1)
                    self._set(idx, ST_LOCAL, stop)
                if stop is not None or not everything:
                    return

    def _submit(self, chunks):
        """Queue chunks as tasks submitted, submitted+1, ...; False if the
        pool is terminating (the input then ends with that error)."""
        first = self._submitted
        pool = self._pool()
        if pool is None or pool._state == TERMINATE:
            self._submitted += 1
            self._set(first, ST_TERMINATED, None)
            self._end_input(first + 1)
            return False
        flat = chunks[0] if len(chunks) == 1 else [x for c in chunks for x in c]
        try:   # all or nothing: only the last chunk can be short
            self._core.submit_chunks(self._job, self._blob, flat, self._chunksize,
                                     self._star, first, False)
            self._submitted += len(chunks)
            return True
        except Exception:
            pass
        except BaseException as e:
            self._interrupted(first, e)
            raise
        # One of them cannot be pickled: that chunk fails, the others run (as
        # multiprocessing does); find it by sending them singly.
        for i, chunk in enumerate(chunks):
            try:
                self._core.submit_chunks(self._job, self._blob, chunk, len(chunk),
                                         self._star, first + i, False)
            except Exception as e:
                self._set(first + i, ST_LOCAL, e)
            except BaseException as e:
                self._interrupted(first + i, e)
                raise
            self._submitted += 1
        return True

    def _interrupted(self, idx, exc):
        """Ctrl-C (or another BaseException) while chunk idx was submitted:
        the input read for it is lost, so the iteration ends there, with that
        error, instead of waiting forever for chunks never queued."""
        self._submitted = idx + 1
        self._end_input(idx + 1)
        err = RuntimeError(f"reading the input of imap was interrupted at chunk {idx}")
        err.__cause__ = exc
        self._set(idx, ST_LOCAL, err)

    def _end_input(self, length):
        with self._lock:
            self._length = length
            self._input = None
            self._check_complete()
            self._cond.notify_all()

    def _stop(self):
        """The pool is terminating: read no more input."""
        with self._lock:
            if self._length is None:
                self._length = self._submitted
                self._input = None
                self._check_complete()
                self._cond.notify_all()

    def _check_complete(self):
        if self._length is not None and self._delivered >= self._length:
            if self._cache.pop(self._job, None) is not None:
                self._core.kick()

    # -- results (the collector's thread) --

    def _set(self, idx, status, value):
        got = (True, value) if status == ST_OK else _outcome(self._job, idx, status, value)
        with self._lock:
            if idx != self._last:  # not a repeat (see ApplyResult._set)
                if self._ordered:
                    self._ready[idx] = got
                else:
                    self._ready[self._tail] = got
                    self._tail += 1
                self._delivered += 1
                self._last = idx
            if self._length is not None:
                self._check_complete()
            if self._sleepers:
                self._cond.notify_all()

    # -- consuming --

    def _take(self):
        """(True, value), (False, exception), or None; caller holds _lock.
        Taking a chunk moves its values to _buf."""
        if self._ordered:
            got = self._ready.pop(self._consumed, None)
        else:
            got = self._ready.pop(self._head, None)
            if got is not None:
                self._head += 1
        if got is None:
            return None
        self._consumed += 1
        ok, val = got
        if not ok:
            return got
        if len(val) == 1:  # chunksize 1: no detour through _buf
            return True, val[0]
        self._buf.extend(val)
        return True, _NO_VALUE

    def next(self, timeout=None):
        buf = self._buf
        deadline = None
        while True:
            if buf:  # the rest of a chunk already taken: no lock, no feeding
                try:
                    return buf.popleft()
                except IndexError:  # another thread took it
                    pass
            if timeout is not None and deadline is None:
                deadline = _monotonic() + timeout
            waiting = False
            with self._lock:
                got = self._take()
                if got is None:
                    if self._length is not None and self._consumed >= self._length:
                        self._check_complete()  # again, in case a Ctrl-C cut it short
                        raise StopIteration
                    if self._submitted > self._consumed or self._length is not None:
                        left = None if deadline is None else deadline - _monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError
                        seen = self._delivered
                        waiting = True
                    # else nothing in flight: read more input first
            if waiting:
                # Collect in this thread (without _lock: delivering takes
                # it).  If another thread collects, wait on _cond for it.
                if self._core.collect(left) <= 0:
                    with self._lock:
                        if self._delivered == seen:
                            self._sleepers += 1
                            try:
                                self._cond.wait(left)
                            finally:
                                self._sleepers -= 1
                continue
            if got is not None and not got[0]:
                if self._chunksize > 1:
                    # As multiprocessing's chunked imap (a generator over the
                    # chunks): a failed chunk ends the iteration.
                    self._stop()
                    with self._lock:
                        self._consumed = self._length = max(self._consumed,
                                                            self._length)
                        self._ready.clear()
                        self._buf.clear()
                raise got[1]
            # A chunk was taken (or none is in flight): top up the window
            # once it is half empty (_feed checks again, under its lock).
            if self._length is None and \
                    self._submitted - self._consumed <= self._window // 2:
                try:
                    self._feed()
                except BaseException:  # Ctrl-C: the value taken is not lost
                    if got is not None and got[1] is not _NO_VALUE:
                        self._buf.appendleft(got[1])
                    raise
            if got is not None and got[1] is not _NO_VALUE:
                return got[1]

    __next__ = next

class IMapUnorderedIterator(IMapIterator):
    """The iterator of imap_unordered: results in completion order."""

    _ordered = False


def _collect_until(core, done, deadline):
    """Collect results in this thread until done() or the deadline: True if
    done(), False if the caller must wait as usual (the deadline passed, or
    another thread collects, or this one cannot)."""
    while not done():
        left = None
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                return False
        if core.collect(left) <= 0:
            return done()
    return True


class _Worker:
    """What pool._pool lists: a worker slot's process, as far as the
    multiprocessing.Process attributes go (pid, is_alive, exitcode)."""

    def __init__(self, core, slot, pid):
        self._core = core
        self._slot = slot
        self.pid = pid or None

    def _now(self):
        return self._core.workers()[self._slot]

    def is_alive(self):
        pid, state, _ = self._now()
        return self.pid is not None and pid == self.pid and state in (_cpool.S_SPAWNED,
                                                                       _cpool.S_READY)

    @property
    def exitcode(self):
        pid, state, wstatus = self._now()
        if pid == self.pid and state != _cpool.S_DEAD:
            return None
        return _describe_status(wstatus)[0] if state == _cpool.S_DEAD else None

    def __repr__(self):
        return f"<cpool worker slot={self._slot} pid={self.pid}>"


def _default_processes():
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


START_METHODS = ("fork", "spawn", "forkserver")


def _start_method(context):
    """The start method a Pool's context names: "fork" for None (whatever
    multiprocessing's default; see Pool), else the name given or the
    context's (a multiprocessing context, or anything with
    get_start_method())."""
    if context is None:
        return "fork"
    if isinstance(context, str):
        method = context
    else:
        get = getattr(context, "get_start_method", None)
        if get is None:
            raise TypeError(f"context must be None, a start method name or a "
                            f"multiprocessing context, not {context!r}")
        method = get()
    if method not in START_METHODS:
        raise ValueError(f"cannot find context for {method!r}; cpool.Pool knows "
                         f"the start methods {', '.join(START_METHODS)}")
    return method


class Pool:
    """A pool of worker processes: multiprocessing.Pool's API and semantics,
    with the machinery in C.

    Differences, all deliberate: a worker that dies mid-task fails exactly
    its tasks with WorkerLostError instead of hanging the caller; a failing
    initializer breaks the pool with InitializerError instead of respawning
    forever; imap/imap_unordered read their input lazily; terminate() fails
    unfinished results with PoolTerminatedError instead of leaving them
    pending forever; a callback that raises is reported and later results
    still arrive.

    Start methods.  Every worker, first or replacement, is forked from the
    pool's single-threaded template process; ``context`` says how that
    template starts.  "fork" (and ``context=None``): forked from the calling
    thread when Pool() is called, so the workers start from the parent's
    state at that moment (functions defined in ``__main__``, even in an
    interactive session, work; the initializer need not be picklable), in
    about a millisecond.  As os.fork() does on Python 3.12+, that fork warns
    (DeprecationWarning) when the parent already runs other threads.
    "spawn" and "forkserver" (names, or multiprocessing contexts): the
    template is a fresh interpreter (an exec of sys.executable), safe
    whatever threads the parent runs; it prepares itself as multiprocessing's
    spawned children do (the ``if __name__ == "__main__"`` rules are the
    same) and the initializer, its arguments, functions and tasks travel by
    reference.  The two mean the same here: the exec'ed template already is
    this pool's fork server.  ``None`` means "fork" whatever multiprocessing's
    default start method (forkserver from Python 3.14): the risk that made
    multiprocessing change it, workers forked later from a parent that by
    then runs threads, does not exist here.
    """

    _wrap_exception = True

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        self._state = None      # __del__ must work if __init__ fails
        self._core = None
        method = _start_method(context)
        if processes is None:
            processes = _default_processes()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._cache = {}
        self._lazy = weakref.WeakSet()
        self._owner = os.getpid()
        self._start_method = method
        spawn = None    # fork the template; else exec it (cpool._template)
        if method != "fork":
            from . import _template
            spawn = _template.spec(method, processes, maxtasksperchild or 0,
                                   initializer, initargs, _worker_bootstrap,
                                   _pack_error)
        try:
            self._core = _cpool.Core(processes, maxtasksperchild or 0, initializer,
                                     tuple(initargs), self._cache, _worker_bootstrap,
                                     _pack_error, spawn)
        finally:
            if spawn is not None:
                _template.spawn_done(spawn)
        self._state = RUN
        _live_pools.add(self)

    # -- checks --

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")
        broken = self._core.broken
        if broken is not None:
            raise _initializer_error(broken)

    @property
    def _pool(self):
        # Pool() does not wait for the forks (the first task overlaps them);
        # whoever asks for the workers waits until their pids are known.
        self._core.wait_started()
        return [_Worker(self._core, i, pid)
                for i, (pid, _, _) in enumerate(self._core.workers())]

    def _repopulate_pool(self):
        """Kept for compatibility: cpool replaces workers by itself."""

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"state={self._state} pool_size={self._processes}>")

    # -- apply --

    def apply(self, func, args=(), kwds={}):
        """Call func(*args, **kwds) in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None):
        """Asynchronous apply: returns an AsyncResult."""
        self._check_running()
        result = ApplyResult(self._cache, callback, error_callback, self._core)
        try:
            self._core.submit_call(result._job, func, args,
                                   kwds if type(kwds) is dict else dict(kwds))
        except BaseException:
            result._abandon()
            raise
        return result

    # -- map family --

    def map(self, func, iterable, chunksize=None):
        """Apply func to each item, in chunks; returns the list of results."""
        return self._map_async(func, iterable, False, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """Like map, but each item is unpacked as func's arguments."""
        return self._map_async(func, iterable, True, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None):
        """Asynchronous map: returns a MapResult."""
        return self._map_async(func, iterable, False, chunksize, callback,
                               error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        """Asynchronous starmap: returns a MapResult."""
        return self._map_async(func, iterable, True, chunksize, callback,
                               error_callback)

    def _map_async(self, func, iterable, star, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        n = len(iterable)
        if chunksize is None:
            chunksize, extra = divmod(n, self._processes * 4)
            if extra:
                chunksize += 1
        if n == 0:
            chunksize = 0
        result = MapResult(self._cache, chunksize, n, callback, error_callback,
                           self._core)
        if n:
            try:
                blob = self._core.func_blob(func)
                self._core.submit_chunks(result._job, blob, iterable, chunksize,
                                         star, 0, True)
            except BaseException:
                result._abandon()
                raise
        return result

    def imap(self, func, iterable, chunksize=1):
        """Like map, but lazy: an iterator of results in input order."""
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        return IMapIterator(self, func, iterable, chunksize, False)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like imap, but results come in the order they complete."""
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        return IMapUnorderedIterator(self, func, iterable, chunksize, False)

    # -- life cycle --

    def close(self):
        """Accept no more tasks; the workers exit once the queued work is done."""
        if self._state == RUN:
            self._state = CLOSE
            self._core.close()

    def terminate(self):
        """Stop the workers now.  Unfinished results fail with
        PoolTerminatedError."""
        self._state = TERMINATE
        if self._core is not None and self._owner == os.getpid():
            for it in list(self._lazy):
                it._stop()
            self._core.terminate()

    def join(self):
        """Wait for the workers to exit; call close() or terminate() first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        # Lazy imap input not yet read is work the caller submitted: read it
        # now, as multiprocessing would have at imap() time.
        for it in list(self._lazy):
            it._feed(everything=True)
        self._core.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if self._state == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}",
                  ResourceWarning, source=self)
        core = self._core
        if core is not None and not core.done and self._owner == os.getpid():
            core.terminate()


_live_pools = weakref.WeakSet()


@__import__("atexit").register
def _terminate_live_pools():
    # The collector threads must be gone before the interpreter finalizes.
    for pool in list(_live_pools):
        if pool._owner == os.getpid() and pool._core is not None \
                and not pool._core.done:
            pool.terminate()


# -- run in the worker processes ------------------------------------------

_NO_VALUE = object()


def _worker_bootstrap(slot):
    """A new worker's Python-side set-up, before the initializer."""
    _live_pools.clear()     # the parent's pools are not ours to terminate
    mpp = sys.modules.get("multiprocessing.process")
    if mpp is not None:
        proc = mpp.current_process()
        proc._name = f"CPoolWorker-{slot + 1}"
        proc._identity = (slot + 1,)
        proc._parent_pid = os.getppid()
        mpp._children = set()
    mpu = sys.modules.get("multiprocessing.util")
    if mpu is not None:
        mpu._finalizer_registry.clear()
        mpu._run_after_forkers()
    try:
        if sys.stdin is not None:
            sys.stdin.close()
            sys.stdin = open(os.devnull)
    except (OSError, ValueError):
        pass


_OOB_MIN = _cpool.OOB_MIN


class _Big:
    """A large bytes/bytearray, pickled as a protocol-5 buffer (out of band:
    cpool copies it once, straight into shared memory).  bytes and bytearray
    never go out of band by themselves, and Pickler.reducer_override is not
    consulted for them; so cpool._cpool swaps them for this first."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        # Rebuilt by cpool's C helper: copied without the GIL, into pages
        # faulted in at once (a fresh 200 MiB bytes otherwise takes 51,200
        # page faults).
        return _cpool._rebuild, (pickle.PickleBuffer(self.obj), type(self.obj))


def _swap_big(o, depth, bigs):
    t = type(o)
    if (t is bytes or t is bytearray) and len(o) >= _OOB_MIN:
        bigs.append(_Big(o))
        return bigs[-1]
    if depth:
        if t is tuple:
            return tuple([_swap_big(x, depth - 1, bigs) for x in o])
        if t is list:
            return [_swap_big(x, depth - 1, bigs) for x in o]
        if t is dict:
            return {k: _swap_big(v, depth - 1, bigs) for k, v in o.items()}
    return o


def _pack_oob(obj):
    """(pickle, [buffers], copied) of an object holding large buffers (called
    from C only for those): protocol 5, the buffers out of band.  copied:
    every buffer is a _Big's, which the receiver copies out (no object keeps
    a view of the shared memory it came in)."""
    bufs, bigs = [], []
    data = pickle.dumps(_swap_big(obj, 2, bigs), protocol=5, buffer_callback=bufs.append)
    return data, bufs, len(bufs) == len(bigs)


_cpool._set_hooks(pack_oob=_pack_oob)   # the extension calls it; it never imports us


class _ShortRepr:
    """A value whose repr is cut short: MaybeEncodingError keeps the repr of
    the result it could not send, and a result too large to send (a full
    /dev/shm) must not make an error report too large to send."""

    __slots__ = ("text",)

    def __init__(self, value):
        import reprlib
        r = reprlib.Repr()
        r.maxstring = r.maxother = 200
        try:
            self.text = r.repr(value)
        except Exception as e:
            self.text = f"<{type(value).__name__} object (repr failed: {e!r})>"

    def __repr__(self):
        return self.text


def _pack_error(exc, value=_NO_VALUE):
    """Pickle (exception, remote traceback text) for the parent.  With
    value: exc is why the result value could not be pickled."""
    if value is _NO_VALUE:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        err, text = exc, '\n"""\n%s"""' % tb
    else:
        from multiprocessing.pool import MaybeEncodingError
        err, text = MaybeEncodingError(exc, _ShortRepr(value)), None
    try:
        return pickle.dumps((err, text), 5)
    except Exception as e:
        from multiprocessing.pool import MaybeEncodingError
        return pickle.dumps((MaybeEncodingError(e, err), text), 5)


def __getattr__(name):
    # Names of multiprocessing.pool that cpool does not reimplement
    # (ThreadPool, RemoteTraceback, MaybeEncodingError, ...).
    import multiprocessing.pool as mpool
    try:
        return getattr(mpool, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
