"""cpool.ProcessPoolExecutor: concurrent.futures on cpool's native core.

A concurrent.futures.ProcessPoolExecutor to isinstance and type checkers,
with none of its machinery run: no management thread, no call queue, no
multiprocessing Process or Pipe.  Underneath is a cpool.Pool; a submit is
one task on its core, whose outcome the C collector hands to a Future
(``_set``, the protocol of results.py's objects).

Cancellation.  As the stdlib's executor keeps at most ``max_workers + 1``
calls in its call queue and the rest pending (cancellable), this one keeps
at most ``_WINDOW_PER_WORKER * max_workers`` futures on the core (RUNNING,
as the stdlib marks those in its call queue) and the rest in a deque,
PENDING: a future cancelled there never runs.  Each outcome delivered lets
the next pending call onto the core, in the delivering thread.

Differences from the stdlib's, all deliberate: a worker that dies fails the
futures it held with cpool.WorkerLostError (a BrokenProcessPool) and the
executor goes on; ``max_tasks_per_child`` works with the fork start method
(workers are forked from cpool's single-threaded template, never from a
parent running threads), and ``mp_context=None`` is fork whatever it is
given; all the workers start at once; a result that cannot be pickled fails
its future with multiprocessing's MaybeEncodingError; a task argument or a
result that cannot be unpickled fails only its future.
"""
import collections
import functools
import os
import threading
import weakref
from _thread import allocate_lock as _allocate_lock
from concurrent.futures import _base
from concurrent.futures import process as _cf_process
from time import monotonic as _monotonic

from .errors import (ST_OK, TaskAbortedError, TimeoutError, _initializer_error,
                     _outcome)
from .imap import IMapIterator
from .pool import Pool, _default_processes, _start_method
from .results import _collect_until, _job_counter

__all__ = ["ProcessPoolExecutor", "Future"]

# Futures on the core at once, per worker (the rest wait, cancellable, in
# the executor's deque): enough for a submit loop to keep every worker busy
# with tiny calls, few enough that most of a large batch stays cancellable.
_WINDOW_PER_WORKER = 2

_RUNNING, _FINISHED = _base.RUNNING, _base.FINISHED
_SETTLED = (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED)


def _run_initializer(initializer, *initargs):
    """The pool's initializer: the executor's, logged as the stdlib's worker
    logs it when it raises (the pool is then broken: InitializerError)."""
    try:
        initializer(*initargs)
    except BaseException:
        import logging
        logger = logging.getLogger("concurrent.futures")
        logger.critical("Exception in initializer:", exc_info=True)
        # The worker ends without Python's finalization: what a handler
        # queued on a multiprocessing queue (QueueHandler) is sent now, as
        # the stdlib's worker sends it when it exits.
        while logger is not None:
            for h in logger.handlers:
                q = getattr(h, "queue", None)
                if hasattr(q, "join_thread"):
                    try:
                        q.close()
                        q.join_thread()
                    except Exception:
                        pass
            logger = logger.parent if logger.propagate else None
        raise


def _adapt(exc):
    """A task's exception as the stdlib's executor gives it: the
    BaseException itself (cpool.Pool wraps SystemExit & co. in
    TaskAbortedError), its remote traceback a
    concurrent.futures.process._RemoteTraceback."""
    if type(exc) is TaskAbortedError and isinstance(exc.__cause__, BaseException):
        exc = exc.__cause__
    cause = exc.__cause__
    if cause is not None and type(cause).__name__ == "RemoteTraceback" \
            and type(cause) is not _cf_process._RemoteTraceback:
        exc.__cause__ = _cf_process._RemoteTraceback(cause.tb)
    return exc


class _Lazy:
    """A Future's attribute made on first use (a non-data descriptor: once
    made it lives in the instance's __dict__, set atomically by
    dict.setdefault, so two threads asking at once get the same object)."""

    def __init__(self, make):
        self.make = make

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        return obj.__dict__.setdefault(self.name, self.make())


class Future(_base.Future):
    """The future of ProcessPoolExecutor.submit: a concurrent.futures.Future
    that the C collector completes.  result() and exception() collect
    results in the calling thread while they wait (as Pool's get() does), so
    a round trip goes straight from the worker's ring to the caller.

    Its condition, waiter list and callback list are made when first used
    (most futures are only ever completed and read): completing one stores
    the outcome, then the state, and only then looks for a condition to
    notify, so a thread that made it and saw the state not yet final is
    always woken (the base class checks the state under the condition).
    """

    _condition = _Lazy(threading.Condition)
    _waiters = _Lazy(list)
    _done_callbacks = _Lazy(list)

    # Defaults, until an instance stores its own (fewer stores per submit).
    _result = None
    _exception = None
    _counted = False    # its slot on the core given back
    _notified = False   # waiters and callbacks told of the outcome

    def __init__(self, feeder, state=_base.PENDING):
        # (the base __init__ is not called: it makes what is lazy here)
        self._state = state
        self._feeder = feeder
        self._job = next(_job_counter)

    @property
    def _defer(self):
        # Done-callbacks run on cpool's collector thread, never inside
        # another future's result() that collects for itself.
        return bool(self.__dict__.get("_done_callbacks"))

    def _settled(self):
        return self._state in _SETTLED

    def _collect(self, timeout):
        """Collect outcomes in this thread until this one is in or the time
        is up; the seconds left for the usual wait (None: no limit)."""
        if timeout is not None and timeout <= 0:
            return timeout
        deadline = None if timeout is None else _monotonic() + timeout
        _collect_until(self._feeder.core, self._settled, deadline)
        return None if deadline is None else max(0.0, deadline - _monotonic())

    def result(self, timeout=None):
        if self._state not in _SETTLED:
            timeout = self._collect(timeout)
        if self._state == _FINISHED and self._exception is None:
            return self._result     # (final: read without the condition)
        return super().result(timeout)

    def exception(self, timeout=None):
        if self._state not in _SETTLED:
            timeout = self._collect(timeout)
        if self._state == _FINISHED:
            return self._exception
        return super().exception(timeout)

    def cancel(self):
        # Under the feeder's lock, which also guards the move of a pending
        # future onto the core (PENDING -> RUNNING): a future cancelled
        # here never runs.
        with self._feeder.lock:
            state = self._state
            if state == _base.PENDING:
                self._state = _base.CANCELLED
        if state in (_RUNNING, _FINISHED):
            return False
        if state == _base.PENDING:
            self._tell(notify_waiters=False)
        return True

    def _tell(self, notify_waiters=True):
        """The state just became final: wake whoever waits, tell the
        waiters of wait() and as_completed() (not for a cancel: they learn
        of it from set_running_or_notify_cancel), run the callbacks."""
        self._notified = True
        d = self.__dict__
        cond = d.get("_condition")
        if cond is not None:
            with cond:
                if notify_waiters:
                    waiters = d.get("_waiters")
                    if waiters:
                        if self._exception is None:
                            for w in waiters:
                                w.add_result(self)
                        else:
                            for w in waiters:
                                w.add_exception(self)
                cond.notify_all()
        if d.get("_done_callbacks"):
            self._invoke_callbacks()

    def _set(self, idx, status, value, nbytes=0):
        # Delivered by the collector (or a thread collecting for itself);
        # may come twice after a Ctrl-C in the first delivery (see
        # ApplyResult._set): each step is done once.
        if self._state != _FINISHED:
            if status == ST_OK:
                self._result = value
            else:
                self._exception = _adapt(_outcome(self._job, idx, status, value)[1])
            self._state = _FINISHED
        if not self._notified:
            d = self.__dict__
            if "_condition" in d or "_done_callbacks" in d:
                self._tell()
            else:   # no one waits or called back (yet: see the class)
                self._notified = True
        fd = self._feeder
        fd.cache.pop(self._job, None)
        if not self._counted:
            self._counted = True
            with fd.lock:
                fd.inflight -= 1
                more = fd.pending
            if more:
                fd.pump()

    def _fail(self, exc):
        """An error submitting its call: the future's outcome."""
        self._exception = exc
        self._state = _FINISHED
        self._tell()


class _Feeder:
    """The calls of one executor on their way to its pool's core: at most
    `window` on the core, the rest pending in order.  Its lock is the
    executor's shutdown lock too."""

    def __init__(self, pool, window):
        self.pool = pool
        self.core = pool._core
        self.cache = pool._cache
        self.opts = pool._pool_opts
        self.window = window
        self.lock = _allocate_lock()
        self.pending = collections.deque()   # (future, fn, args, kwargs)
        self.inflight = 0       # futures on the core, or on their way there
        self.starting = 0       # of which not yet handed to the core
        self.shutdown = False   # no more submits; close the pool once drained
        self.closed = threading.Event()

    def start(self, f, fn, args, kwargs, check=True):
        """Hand a RUNNING future's call to the core (inflight and starting
        counted it).  An error submitting it (a pickling error, a broken
        pool) fails the future; a BaseException (Ctrl-C) is raised too.
        check: the pool's state is checked first (submit() checked it)."""
        job = f._job
        self.cache[job] = f
        try:
            if check:
                self.pool._check_running()
            self.pool._submit_call(job, fn, args, kwargs, *self.opts)
        except BaseException as e:
            self.cache.pop(job, None)
            f._counted = True
            f._fail(e)
            self._started(on_core=False)
            if not isinstance(e, Exception):
                raise
            return
        self._started(on_core=True)

    def _started(self, on_core):
        """A call is no longer on its way to the core (on_core: it reached
        it; else its room in the window is free again); close the pool if
        a shutdown was waiting for that."""
        with self.lock:
            self.starting -= 1
            if not on_core:
                self.inflight -= 1
            close = self._drained()
        if close:
            self._close()

    def release(self):
        """A future on the core is done: let pending ones on."""
        with self.lock:
            self.inflight -= 1
            if not self.pending:
                return
        self.pump()

    def pump(self):
        while True:
            with self.lock:
                if not self.pending or self.inflight >= self.window:
                    return
                f, fn, args, kwargs = self.pending.popleft()
                run = f._state == _base.PENDING
                if run:     # (cancel() takes this lock to change it)
                    f._state = _RUNNING
                self.inflight += 1
                self.starting += 1
            if run:
                try:
                    self.start(f, fn, args, kwargs)
                except BaseException:
                    pass    # (it failed its future; not this thread's to raise)
            else:   # cancelled while pending: it never runs
                f.set_running_or_notify_cancel()    # (tells wait() and as_completed())
                self._started(on_core=False)

    def _drained(self):
        """Under the lock: True once, when shutdown finds no call still on
        its way to the core (the pool may then be closed)."""
        if self.shutdown and not self.pending and not self.starting \
                and not self.closed.is_set():
            self.closed.set()
            return True
        return False

    def _close(self):
        try:
            self.pool.close()
        except Exception:   # (already closed or terminated)
            pass

    def cancel_pending(self):
        with self.lock:
            items = list(self.pending)
            self.pending.clear()
            close = self._drained()
        for f, _, _, _ in items:
            with self.lock:
                state = f._state
                if state == _base.PENDING:
                    f._state = _base.CANCELLED
            if state == _base.PENDING:
                f._tell(notify_waiters=False)
            if state in (_base.PENDING, _base.CANCELLED):
                f.set_running_or_notify_cancel()
        if close:
            self._close()


# Feeders of executors not yet shut down and waited for (their pools run
# until the work submitted is done, also when the executor itself is
# dropped); at interpreter exit each is waited for, as the stdlib's are.
_live = set()
_global_shutdown = False


def _prune():
    for fd in list(_live):
        if fd.closed.is_set() and fd.core.done:
            _live.discard(fd)


def _python_exit():
    global _global_shutdown
    _global_shutdown = True
    for fd in list(_live):
        if fd.pool._owner != os.getpid():
            continue
        with fd.lock:
            fd.shutdown = True
            close = fd._drained()
        if close:
            fd._close()
        fd.closed.wait()
        try:
            fd.pool.join()
        except Exception:
            pass
        _live.discard(fd)


# Before atexit's hooks (where cpool.Pool terminates what still runs), as
# the stdlib's executors wait for their work at exit.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)
else:  # pragma: no cover
    import atexit
    atexit.register(_python_exit)


class _Process:
    """What executor._processes maps pids to: a worker, as far as the
    multiprocessing.Process attributes go."""

    def __init__(self, worker):
        self._worker = worker
        self.pid = worker.pid

    def is_alive(self):
        return self._worker.is_alive()

    @property
    def exitcode(self):
        return self._worker.exitcode

    def terminate(self):
        self._signal(15)

    def kill(self):
        self._signal(9)

    def _signal(self, sig):
        if self.is_alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def join(self, timeout=None):
        import time
        deadline = None if timeout is None else _monotonic() + timeout
        while self.is_alive():
            if deadline is not None and _monotonic() >= deadline:
                return
            time.sleep(0.01)

    def __repr__(self):
        return f"<cpool executor worker pid={self.pid}>"


class ProcessPoolExecutor(_cf_process.ProcessPoolExecutor):
    """concurrent.futures.ProcessPoolExecutor on cpool's core: submit() returns
    concurrent.futures Futures, map() runs in chunks through the pool's
    imap.  A concurrent.futures.process.ProcessPoolExecutor to isinstance
    and type checkers; none of its code runs (its __init__ is never called;
    no thread, queue or pipe of its own).

    max_workers: the worker processes (None: the CPUs this process may
    use); mp_context: a start method name or a multiprocessing context
    (None: fork, see cpool.Pool); initializer(*initargs) runs in each
    worker; max_tasks_per_child: a worker is replaced after that many
    calls (also under fork).

    Differences from the stdlib's: a worker that dies (killed, crashed,
    os._exit) fails only the futures it held, with cpool.WorkerLostError
    (a BrokenProcessPool), and the executor goes on; every worker starts at
    once; see cpool.futures for the rest.
    """

    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), *, max_tasks_per_child=None):
        self._feeder = None     # __del__ must work if __init__ fails
        if max_workers is None:
            max_workers = _default_processes()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:      # (under cpool.install(): the program's default)
            mp_context = self.__dict__.pop("_mp_default_context", None)
        method = _start_method(mp_context)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        import multiprocessing
        self._max_workers = max_workers
        self._mp_context = (mp_context if mp_context is not None and
                            not isinstance(mp_context, str)
                            else multiprocessing.get_context(method))
        self._initializer, self._initargs = initializer, initargs
        self._max_tasks_per_child = max_tasks_per_child
        if initializer is not None:
            # (a partial, not initargs: the pool sends its initializer by
            # value when it must, a lambda say; see cpool._cloud)
            initializer = functools.partial(_run_initializer, initializer)
        _prune()
        pool = Pool(max_workers, initializer, initargs, max_tasks_per_child,
                    context=method)
        self._pool = pool
        self._feeder = _Feeder(pool, _WINDOW_PER_WORKER * max_workers)
        self._shutdown_lock = self._feeder.lock
        self._maps = weakref.WeakSet()   # map iterators reading lazily (buffersize)
        _live.add(self._feeder)

    # -- what the stdlib's executor keeps and its tests read --

    @property
    def _broken(self):
        broken = self._pool._core.broken
        if broken is None:
            return False
        return str(_initializer_error(broken))

    @property
    def _processes(self):
        if self._feeder is None or self._feeder.closed.is_set() and self._pool._core.done:
            return None
        return {w.pid: _Process(w) for w in self._pool._pool if w.pid}

    @property
    def _shutdown_thread(self):
        return self._feeder.shutdown

    def _check_submit(self):
        """Under the lock: raise if no call may be submitted now."""
        fd = self._feeder
        broken = fd.core.broken
        if broken is not None:
            raise _initializer_error(broken)
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after "
                               "interpreter shutdown")
        if fd.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn, /, *args, **kwargs):
        """Schedule fn(*args, **kwargs) in a worker; returns a Future."""
        fd = self._feeder
        f = Future(fd, _RUNNING)
        with fd.lock:
            if fd.shutdown or _global_shutdown or fd.core.broken is not None:
                self._check_submit()
            if fd.pending or fd.inflight >= fd.window:
                f._state = _base.PENDING    # (no one else holds it yet)
                fd.pending.append((f, fn, args, kwargs))
                return f
            fd.inflight += 1
            fd.starting += 1
        fd.start(f, fn, args, kwargs, False)
        return f

    submit.__doc__ = _base.Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """fn applied to the items of the iterables, in worker processes,
        chunksize items to a task: an iterator of the results in order,
        raising an item's exception in its place.  timeout (seconds, from
        this call): next() raises TimeoutError once it passes.
        buffersize (as in Python 3.14): the input is read lazily, at most
        that many chunks ahead of the results taken; None: it is read here,
        at once, as the stdlib's map does."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + _monotonic()
        items = zip(*iterables)
        if buffersize is None:
            items = list(items)
        with self._feeder.lock:
            self._check_submit()
        pool = self._pool
        it = IMapIterator(pool, fn, items, chunksize, True, buffersize, pool._pool_opts)
        if buffersize is not None:
            self._maps.add(it)
        return _map_results(it, end_time)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submits; with cancel_futures, pending futures are
        cancelled; with wait, return once every call submitted has run and
        the workers have exited.  A map with buffersize submits no more
        input."""
        fd = self._feeder
        if fd is None:
            return
        for it in list(self._maps):
            with it._lock:
                cut = it._length is None
            it._stop()
            it._cut = cut
        with fd.lock:
            fd.shutdown = True
            close = fd._drained()
        if close:
            fd._close()
        if cancel_futures:
            fd.cancel_pending()
        if wait:
            pool = self._pool
            if pool._owner == os.getpid() and not fd.closed.is_set():
                _collect_until(fd.core, fd.closed.is_set, None)
                fd.closed.wait()
            pool.join()
            _live.discard(fd)

    shutdown.__doc__ = _base.Executor.shutdown.__doc__

    def __del__(self):
        # Dropped without shutdown: as shutdown(wait=False); the work
        # submitted still runs (the pool stays in _live until it is done).
        fd = self._feeder
        if fd is not None and not fd.shutdown:
            with fd.lock:
                fd.shutdown = True
                close = fd._drained()
            if close:
                fd._close()

    def __repr__(self):
        return (f"<cpool.ProcessPoolExecutor max_workers={self._max_workers} "
                f"{'shut down' if self._feeder and self._feeder.shutdown else 'running'}>")

    def __reduce__(self):
        raise TypeError("cannot pickle 'ProcessPoolExecutor' object")


def _map_results(it, end_time):
    """The iterator map() returns (a generator, as the stdlib's): results in
    order; the first error raised ends it; dropped early, the rest of the
    input is not read."""
    try:
        while True:
            err = None
            try:
                if end_time is None:
                    x = it.next()
                else:
                    x = it.next(end_time - _monotonic())
            except StopIteration:
                if getattr(it, "_cut", False):
                    err = RuntimeError("cannot schedule new futures after shutdown")
                else:
                    return
            except TimeoutError:
                err = _base.TimeoutError()
            except Exception as e:
                err = _adapt(e)
            if err is not None:
                raise err
            # Hold no reference to a result given out (as the stdlib's map):
            # its slot in the chunk the iterator took is cleared.
            buf, i = it._bufl, it._bufi - 1
            if 0 <= i < len(buf) and buf[i] is x:
                buf[i] = None
            box = [x]
            del x, buf
            yield box.pop()     # (this frame keeps no reference either)
    finally:
        it._stop()

