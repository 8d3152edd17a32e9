"""cpool.Pool: the multiprocessing.Pool API over the machinery in cpool._cpool.

This module is the public face and the per-call glue: argument checks,
chunk sizes and the pool's life cycle.  Forking, queueing, running and
collecting are C; the result objects the collector fills in are in
results.py and imap.py, the exceptions in errors.py, and what runs inside
the workers in _worker.py.
"""
import multiprocessing
import multiprocessing.pool as _mp_pool
import os
import warnings
import weakref
from types import FunctionType as _FunctionType

from . import _cloud, _cpool, _progress
from ._worker import _pack_error, _worker_bootstrap
from .errors import (BrokenPoolError, InitializerError, PoolTerminatedError,
                     ResultUnpicklingError, TaskAbortedError, TaskTimeoutError,
                     TimeoutError,
                     WorkerLostError, _describe_status, _initializer_error)
from .imap import (IMapIterator, IMapUnorderedIterator, _IMapIteratorWithProgress,
                   _IMapUnorderedIteratorWithProgress)
from .results import ApplyResult, AsyncResult, MapResult, _MapResultWithProgress
from .stats import PoolStats, WorkerStats

__all__ = [
    "Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
    "IMapUnorderedIterator", "TimeoutError", "WorkerLostError",
    "BrokenPoolError", "InitializerError", "PoolTerminatedError",
    "TaskAbortedError", "TaskTimeoutError", "ResultUnpicklingError", "PoolStats", "WorkerStats",
]

# The same state names as multiprocessing.pool, so code (and CPython's tests)
# comparing pool._state with multiprocessing.pool.RUN keeps working.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"


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


# A local pool's map, given no chunksize, cuts a long input into about this
# many chunks per worker (multiprocessing: 4), of FINE_CHUNK_MIN items at least
# (or of multiprocessing's size, if that is smaller), before _default_chunks
# rounds their count up to a multiple of the workers.  Results then come back while the
# workers go on, not in four large lumps at the end: a 1M-item map of tiny
# items on 2 workers ran 16% faster than with 4, a CPU-bound map 6% (8 and
# 32 gained less; a chunk costs the parent a few microseconds, which the
# floor keeps small against its items).
FINE_CHUNKS = 16
FINE_CHUNK_MIN = 256


def _default_chunks(n, processes, fine=False):
    """(chunksize, chunks): how map cuts n items when given no chunksize.

    Not fine: multiprocessing's chunks of ceil(n / (4 * processes)) items,
    the last one shorter (chunks None).  Fine: about FINE_CHUNKS chunks a
    worker, of FINE_CHUNK_MIN items at least (or multiprocessing's size, if
    smaller); then as many as a multiple of the workers (n at most: where
    the floor applies, chunks at most a fifth smaller), the sizes of any two
    differing by one item at most (chunksize: the largest).  So
    items that take the same time leave no worker idle while another runs
    the last chunks: 4,000 items of 50 us on 2 workers, cut in chunks of 256
    (16 of them, the last of 160), ran at 95.5% of the ideal rate."""
    chunksize = -(-n // (processes * 4))
    if not fine or n == 0:
        return chunksize, None
    size = max(-(-n // (processes * FINE_CHUNKS)), min(chunksize, FINE_CHUNK_MIN))
    chunks = min(n, -(-n // size // processes) * processes)
    return -(-n // chunks), chunks


def _check_pool_args(processes, maxtasksperchild, initializer):
    """Pool()'s checks of these, as multiprocessing's (processes None: the
    default, which a cluster pool takes from its cluster)."""
    if processes is not None and processes < 1:
        raise ValueError("Number of processes must be at least 1")
    if maxtasksperchild is not None:
        if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
            raise ValueError("maxtasksperchild must be a positive int or None")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


def _check_int(name, value, least, limit):
    """value, checked: an int (bool is not one), least <= value < limit
    (what the C side stores it in)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not least <= value < limit:
        raise ValueError(f"{name} must be from {least} to {limit - 1}, not {value}")
    return value


def _check_retries(retries):
    return _check_int("retries", retries, 0, 2 ** 32)


def _timeout_ns(task_timeout):
    """task_timeout (seconds, None: none), checked, in nanoseconds (0: none)."""
    if task_timeout is None:
        return 0
    if not isinstance(task_timeout, (int, float)) or isinstance(task_timeout, bool):
        raise TypeError(f"task_timeout must be a number of seconds or None, "
                        f"not {type(task_timeout).__name__}")
    if not 0 < task_timeout < 2 ** 32:
        raise ValueError(f"task_timeout must be more than 0 seconds, not {task_timeout}")
    return max(1, int(task_timeout * 1e9))


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


class Pool(_mp_pool.Pool):
    """A pool of worker processes: multiprocessing.Pool's API and semantics,
    with the machinery in C.  A multiprocessing.pool.Pool to isinstance and
    type checkers (libraries check it before they take a pool); none of its
    code runs: every method is cpool's, its __init__ is never called, and it
    starts no handler thread and opens no pipe.

    Differences, all deliberate: a worker that dies mid-task fails exactly
    its tasks with WorkerLostError instead of hanging the caller (or, with
    ``retries=N``, runs each of them again on another worker, up to N times;
    a task that raises is never run again; per call too); with
    ``max_memory_per_child=`` (bytes), a worker whose resident memory is
    over it after a task is replaced before its next one, and one that grows
    past twice it during a task is killed (that task fails with
    WorkerLostError saying so, or runs again with retries; resident memory
    is the worker's RSS, which with fork counts the pages it still shares
    with the parent as it was when the pool started); with
    ``task_timeout=`` (seconds, per item, also inside a chunk; per call
    too), an item that runs past it gets TaskTimeoutError raised inside it
    (its finally: blocks run), and its worker is killed and replaced if it
    has not stopped a second later; either way only that item fails (the
    rest of its chunk, and the pool, go on); a failing
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

    On a cluster.  ``cluster=`` a Dask scheduler's address or a
    ``distributed.Client`` (or the environment variable CPOOL_CLUSTER, for
    pools made without it) runs the tasks on that Dask cluster instead, with
    the same methods and semantics (``pip install cpool[cluster]``; see
    cpool.cluster for what differs).

    Lambdas and closures.  A callable (a task's function, the initializer)
    that does not pickle by reference, a lambda, a closure, a nested
    function, or a function of ``__main__`` the exec'ed template does not
    define (one under ``if __name__ == "__main__":``, or defined with
    ``python -c``), travels by value with cloudpickle when it is installed
    (``pip install cpool[cloudpickle]``); without it, the pickling error
    says so.  Only the callable: arguments and results travel as before.
    """

    _wrap_exception = True

    def __new__(cls, *args, cluster=None, **kwargs):
        # cluster= (or CPOOL_CLUSTER, for Pool itself): the same API on a
        # Dask cluster (cpool.cluster, imported only then); type.__call__
        # then runs ClusterPool.__init__, never this class's.
        if cluster is None and cls is Pool:
            cluster = os.environ.get("CPOOL_CLUSTER") or None
        if cluster is None:
            return super().__new__(cls)
        from .cluster import ClusterPool
        if cls is not Pool and not issubclass(cls, ClusterPool):
            raise TypeError(f"cluster= makes a cpool.Pool, not a {cls.__qualname__}")
        obj = super().__new__(ClusterPool if cls is Pool else cls)
        obj._cluster_given = cluster
        return obj

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, retries=0,
                 max_memory_per_child=None, task_timeout=None, cluster=None):
        self._state = None      # __del__ must work if __init__ fails
        self._core = None
        if context is None:     # multiprocessing.pool.Pool() under cpool.install(): its default
            context = self.__dict__.pop("_mp_default_context", None)
        method = _start_method(context)
        if processes is None:
            processes = _default_processes()
        _check_pool_args(processes, maxtasksperchild, initializer)
        self._retries = _check_retries(retries)
        self._timeout_ns = _timeout_ns(task_timeout)
        self._pool_opts = (self._retries, self._timeout_ns)
        if max_memory_per_child is not None:   # bytes
            _check_int("max_memory_per_child", max_memory_per_child, 1, 2 ** 64)
        self._max_memory_per_child = max_memory_per_child
        self._processes = processes
        # What multiprocessing's Pool keeps and libraries read.
        self._ctx = multiprocessing.get_context(method)
        self._initializer, self._initargs = initializer, initargs
        self._maxtasksperchild = maxtasksperchild
        # Finer default chunks, unless a chunk is what a worker's lifetime
        # counts (maxtasksperchild): then multiprocessing's.
        self._fine_chunks = maxtasksperchild is None
        self._cache = {}
        self._lazy = weakref.WeakSet()
        self._owner = os.getpid()
        self._start_method = method
        # The workers' __main__ is not ours (spawn, forkserver from `python
        # -c`, stdin, a REPL): functions of __main__ go by value (cpool._cloud).
        self._main_gone = _cloud.main_is_gone(method)
        self._main_found = set()    # functions of __main__ the workers have
        spawn = None    # fork the template; else exec it (cpool._template)
        if method != "fork":
            from . import _template
            spawn = _template.spec(method, processes, maxtasksperchild or 0,
                                   _cloud.main_by_value(initializer, set()),
                                   initargs, _worker_bootstrap, _pack_error)
        try:
            self._core = _cpool.Core(processes, maxtasksperchild or 0, initializer,
                                     tuple(initargs), self._cache, _worker_bootstrap,
                                     _pack_error, spawn,
                                     max_rss=max_memory_per_child or 0)
        finally:
            if spawn is not None:
                _template.spawn_done(spawn)
        self._state = RUN
        _live_pools.add(self)

    # -- checks --

    def _terminating(self):
        return self._state == TERMINATE

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

    def stats(self):
        """A snapshot of the pool's tasks and workers (cpool.PoolStats):
        queued, running, done, failed, lost and retried tasks, and per worker
        its pid, state, tasks done, seconds busy and idle, how long its
        current task has run, its resident memory and its slot's respawns.
        Cheap enough to call in a loop; print() it for a table."""
        if self._core is None:
            raise ValueError("Pool not running")
        return PoolStats._from_core(self._core.stats())

    def _repopulate_pool(self):
        """Kept for compatibility: cpool replaces workers by itself."""

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"state={self._state} pool_size={self._processes}>")

    # -- apply --

    def _opts(self, retries, task_timeout):
        """A call's (retries, time limit in ns) for the core: the pool's
        where the call gives None."""
        if retries is None and task_timeout is None:
            return self._pool_opts
        return (self._retries if retries is None else _check_retries(retries),
                self._timeout_ns if task_timeout is None else _timeout_ns(task_timeout))

    def apply(self, func, args=(), kwds={}, *, retries=None, task_timeout=None):
        """Call func(*args, **kwds) in a worker and return its result.
        retries, task_timeout: as Pool's (None: the pool's)."""
        return self.apply_async(func, args, kwds, retries=retries,
                                task_timeout=task_timeout).get()

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None, *, retries=None, task_timeout=None):
        """Asynchronous apply: returns an AsyncResult."""
        self._check_running()
        if retries is None and task_timeout is None:    # (apply_async's cost is per call)
            retries, timeout = self._pool_opts
        else:
            retries, timeout = self._opts(retries, task_timeout)
        result = ApplyResult(self._cache, callback, error_callback, self._core)
        try:
            self._submit_call(result._job, func, args,
                              kwds if type(kwds) is dict else dict(kwds), retries, timeout)
        except BaseException:
            result._abandon()
            raise
        return result

    # -- how a callable reaches the workers (cpool._cloud): apply_async's,
    # the map family's and the executor's one way --

    def _sendable(self, func):
        """func, or func by value when it is a function of __main__ the
        workers of an exec'ed template will not define."""
        if self._main_gone and getattr(func, "__module__", None) == "__main__" \
                and (type(func) is not _FunctionType or func not in self._main_found):
            return _cloud.main_by_value(func, self._main_found)
        return func

    def _submit_call(self, job, func, args, kwds, retries, timeout):
        """Queue func(*args, **kwds) as task 0 of job.  When the call does
        not pickle and the callable is what failed (a lambda, a closure), it
        goes again with the callable by value; else, or without
        cloudpickle, that error (nothing was queued)."""
        if self._main_gone:     # (a fork pool never is: no call for it per submit)
            func = self._sendable(func)
        try:
            self._core.submit_call(job, func, args, kwds, retries, timeout)
        except BaseException as e:
            self._core.submit_call(job, _cloud.by_value(func, e), args, kwds, retries,
                                   timeout)

    def _func_blob(self, func):
        """A map-like job's pickled function (core.func_blob), by value when
        it must be, as _submit_call sends an apply's."""
        func = self._sendable(func)
        try:
            return self._core.func_blob(func)
        except Exception as e:
            return self._core.func_blob(_cloud.by_value(func, e))

    # -- map family --

    def map(self, func, iterable, chunksize=None, *, retries=None, progress=None,
            task_timeout=None):
        """Apply func to each item, in chunks; returns the list of results.
        retries: as Pool's (None: the pool's); a chunk is what runs again.
        task_timeout: as Pool's (None: the pool's); the limit is per item.

        progress: True draws a progress bar on stderr (tqdm's if tqdm is
        installed, else a plain one), finished when the map ends, also by
        an error or a Ctrl-C; a callable is called as progress(done, total)
        after each chunk delivered, in the thread that delivers it.  Counts
        are of items, not chunks.  None (or False): nothing, at no cost."""
        return self._map_async(func, iterable, False, chunksize, retries=retries,
                               progress=progress, task_timeout=task_timeout).get()

    def starmap(self, func, iterable, chunksize=None, *, retries=None, progress=None,
                task_timeout=None):
        """Like map, but each item is unpacked as func's arguments.
        retries, progress, task_timeout: as map's."""
        return self._map_async(func, iterable, True, chunksize, retries=retries,
                               progress=progress, task_timeout=task_timeout).get()

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None, *, retries=None, progress=None,
                  task_timeout=None):
        """Asynchronous map: returns a MapResult.  retries, progress,
        task_timeout: as map's (the bar ends when the result is ready, or
        when get() or wait() raises)."""
        return self._map_async(func, iterable, False, chunksize, callback,
                               error_callback, retries, progress, task_timeout)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None, *, retries=None, progress=None,
                      task_timeout=None):
        """Asynchronous starmap: returns a MapResult.  retries, progress,
        task_timeout: as map_async's."""
        return self._map_async(func, iterable, True, chunksize, callback,
                               error_callback, retries, progress, task_timeout)

    def _map_async(self, func, iterable, star, chunksize=None, callback=None,
                   error_callback=None, retries=None, progress=None, task_timeout=None):
        self._check_running()
        opts = self._opts(retries, task_timeout)
        if progress is not None:
            _progress.check(progress)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        n = len(iterable)
        chunks = None
        if chunksize is None:
            chunksize, chunks = _default_chunks(n, self._processes, self._fine_chunks)
        if n == 0:
            chunksize = 0
        shown = None if progress is None else _progress.start(progress, n)
        if shown is None:
            result = MapResult(self._cache, chunksize, n, callback, error_callback,
                               self._core, chunks)
        else:
            result = _MapResultWithProgress(self._cache, chunksize, n, callback,
                                            error_callback, self._core, shown, chunks)
        if n:
            try:
                blob = self._func_blob(func)
                cut = () if chunks is None else (chunks,)
                self._core.submit_chunks(result._job, blob, iterable, chunksize,
                                         star, 0, True, *opts, *cut)
            except BaseException:
                result._abandon()
                raise
        return result

    def imap(self, func, iterable, chunksize=1, buffersize=None, *, retries=None,
             progress=None, task_timeout=None):
        """Like map, but lazy: an iterator of results in input order.

        The input is read as the results are consumed.  buffersize (as in
        CPython 3.15): at most that many chunks submitted whose results the
        consumer has not taken.  None: as far ahead as keeps every worker
        busy, within a bound on the results held (see cpool.imap).  retries,
        task_timeout: as Pool's (None: the pool's); an item past its time
        limit raises TaskTimeoutError in its place, and the iteration goes on.

        progress: as map's, counting the items whose results have arrived
        (total None when the input has no len(), as a generator); the bar
        ends when they all have, or when next() raises (a task's error, a
        Ctrl-C), or when the pool is terminated."""
        return self._imap(IMapIterator, func, iterable, chunksize, buffersize,
                          self._opts(retries, task_timeout), progress)

    def imap_unordered(self, func, iterable, chunksize=1, buffersize=None, *,
                       retries=None, progress=None, task_timeout=None):
        """Like imap, but results come in the order they complete.
        retries, progress, task_timeout: as imap's."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, buffersize,
                          self._opts(retries, task_timeout), progress)

    def _imap(self, cls, func, iterable, chunksize, buffersize, opts, progress=None):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if buffersize is not None:
            if not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if progress is not None:
            _progress.check(progress)
        shown = None
        if progress is not None and progress is not False:
            shown = _progress.start(progress, _progress.total_of(iterable))
        if shown is None:   # (also progress=True with no stderr to draw on)
            return cls(self, func, iterable, chunksize, False, buffersize, opts)
        cls = (_IMapIteratorWithProgress if cls is IMapIterator
               else _IMapUnorderedIteratorWithProgress)
        try:
            return cls(self, func, iterable, chunksize, False, buffersize, opts, shown)
        except BaseException:
            shown.end()
            raise

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

    # What __del__ calls is bound here, once, in a closure: a pool collected
    # at interpreter shutdown may find this module's globals already None.
    # (multiprocessing binds them as default arguments, which help() then
    # shows as part of the signature.)
    def _make_del(warn, run, getpid):
        def __del__(self):
            """A running pool warns (ResourceWarning); its workers stop."""
            if self._state == run:
                warn(f"unclosed running multiprocessing pool {self!r}",
                     ResourceWarning, source=self)
            core = self._core
            if core is not None and not core.done and self._owner == getpid():
                core.terminate()
        return __del__

    __del__ = _make_del(warnings.warn, RUN, os.getpid)
    __del__.__qualname__ = "Pool.__del__"
    del _make_del


_live_pools = weakref.WeakSet()


@__import__("atexit").register
def _terminate_live_pools():
    # The collector threads must be gone before the interpreter finalizes.
    for pool in list(_live_pools):
        if pool._owner == os.getpid() and pool._core is not None \
                and not pool._core.done:
            pool.terminate()


def __getattr__(name):
    # Names of multiprocessing.pool that cpool does not reimplement
    # (ThreadPool, RemoteTraceback, MaybeEncodingError, ...).
    import multiprocessing.pool as mpool
    try:
        return getattr(mpool, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
