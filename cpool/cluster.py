"""cpool.Pool on a Dask cluster: ``Pool(cluster=ADDRESS or Client)``, or the
environment variable CPOOL_CLUSTER.

Dask's ``distributed`` does the scheduling, the data transfer, the worker
management and the failure detection; this module is the glue that gives
them cpool's Pool API.  It is imported only when a pool names a cluster.

How.  ClusterPool is a cpool.Pool whose ``_core`` is a _ClusterCore instead
of the C core: the Pool's own methods (argument checks, chunking, the result
objects of cpool.results and the lazy iterators of cpool.imap) run unchanged
and call the core's submit_call/submit_chunks, and the core turns each
apply, or each chunk of a map, into one Dask task (``_run``), which answers
as a local worker does: (status, pickle) with the exception and its remote
traceback text for a task that raised (cpool._worker._pack_error).  A Dask
done-callback queues each finished future; one thread per pool gathers them
in batches and hands the outcomes to the result objects (``_set``, as the C
collector does), where callbacks run.

What differs from a local pool (also in the README):
- functions, arguments and results travel with cloudpickle (Dask has it):
  functions of ``__main__`` and lambdas go by value;
- a worker's death: Dask notices it, and the task fails with
  WorkerLostError (``retries=N``: run again up to N times).  The pool sets
  the scheduler's allowed-failures to 0 (a setting of the scheduler, for
  all its clients) so that Dask itself does not rerun it first;
- task_timeout= and max_memory_per_child= are refused (Dask's workers have
  their own ``--memory-limit``); maxtasksperchild is accepted and ignored
  (Dask's ``--lifetime`` recycles workers);
- Value, Array, Lock and RLock cannot be arguments: memory is not shared
  across machines (TypeError);
- an object that many items of one map share (the same object, such as a
  large array in every starmap tuple) is scattered to the cluster once;
- processes= bounds the tasks in flight (default: no bound beyond the
  cluster's threads, which Dask keeps busy); pool._pool is empty and
  stats() is Dask's dashboard's business.
"""
import atexit
import multiprocessing
import os
import pickle
import queue
import threading
import weakref
from collections import deque
from types import FunctionType

try:
    import cloudpickle
    from distributed import Client
except ImportError as e:
    raise ImportError(
        f"cpool.Pool(cluster=...) and CPOOL_CLUSTER need Dask's distributed, which "
        f"cannot be imported ({e}); install it with: pip install cpool[cluster]") from e

from . import _cpool
from .errors import (ST_ERR, ST_INITFAIL, ST_LOCAL, ST_OK, ST_TERMINATED, ST_UNPICKLE,
                     WorkerLostError)
from .pool import RUN, Pool, _check_pool_args, _check_retries

__all__ = ["ClusterPool"]

# An object shared by several items of one map is scattered once when its
# pickle is at least this large (smaller ones ride in each chunk).
SCATTER_MIN = 64 << 10


def _set_no_scheduler_retries(dask_scheduler=None):
    # (runs in the scheduler: cpool counts a task's worker deaths itself)
    dask_scheduler.allowed_failures = 0


# -- in the Dask worker --

_inited = set()     # the pools (tokens) whose initializer ran in this process
_init_lock = threading.Lock()


_mains = {}         # token: the namespace the pool's functions of __main__ share here
_funcs = {}         # (token, pickle): the function, loaded


def _load_func(token, blob):
    """The function a task's pickle holds.  Functions of the client's
    __main__ come by value (cloudpickle), each pickle with a globals dict of
    its own: they are given one namespace per pool in this process instead,
    as a module's functions share its globals, so that what the initializer
    sets in a global the tasks see (as under spawn, where the workers import
    the main module once)."""
    key = (token, blob)
    func = _funcs.get(key)
    if func is not None:
        return func
    func = pickle.loads(blob)
    if type(func) is FunctionType and func.__module__ == "__main__":
        ns = _mains.setdefault(token, {})
        own = func.__globals__
        if own is not ns:
            for k, v in own.items():
                ns.setdefault(k, v)
            for k, v in list(ns.items()):   # its fellow functions too
                if type(v) is FunctionType and v.__globals__ is own:
                    ns[k] = _rebound(v, ns)
            func = _rebound(func, ns)
    if len(_funcs) > 256:
        _funcs.clear()
    _funcs[key] = func
    return func


def _rebound(f, ns):
    g = FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__, g.__qualname__, g.__module__ = f.__kwdefaults__, f.__qualname__, \
        f.__module__
    g.__doc__, g.__annotations__ = f.__doc__, f.__annotations__
    g.__dict__.update(f.__dict__)
    return g


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, shared):
        super().__init__(f)
        self._shared = shared

    def persistent_load(self, pid):
        return self._shared[pid]


def _run(init, fblob, payload, kind, shared):
    """One task in a Dask worker: the pool's initializer first if this
    process has not run it, then the call (kind "apply") or the chunk
    ("map", "star").  init: (the pool's token, its initializer's pickle or
    None).  Returns (status, bytes): ST_OK and the result's pickle, or
    ST_ERR/ST_INITFAIL and cpool._worker._pack_error's pickle."""
    import io
    from ._worker import _pack_error, _traceback_text
    token, iblob = init
    if iblob is not None:
        with _init_lock:
            if token not in _inited:
                try:
                    iblob, initargs = pickle.loads(iblob)
                    _load_func(token, iblob)(*initargs)
                except BaseException as e:
                    return ST_INITFAIL, _pack_error(e)
                _inited.add(token)
    try:
        func, load = _load_func(token, fblob), _Unpickler(io.BytesIO(payload), shared).load
        if kind == "apply":
            args, kwds = load()
            value = func(*args, **kwds)
        else:
            items = load()
            if kind == "star":
                value = [func(*x) for x in items]
            else:
                value = [func(x) for x in items]
    except BaseException as e:
        try:    # (cloudpickle: an exception class of __main__ goes by value)
            return ST_ERR, cloudpickle.dumps((e, _traceback_text(e)), 5)
        except Exception:
            return ST_ERR, _pack_error(e)
    try:
        return ST_OK, cloudpickle.dumps(value, 5)
    except Exception as e:
        return ST_ERR, _pack_error(e, value)


# -- in the client --

def _key_name(func):
    """The start of a task's key: func's name, as Dask names its own."""
    name = getattr(func, "__name__", None) or type(func).__name__
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name))
    return name[:40] or "cpool"


def _is_shared_memory(obj):
    from . import sharedctypes
    return (isinstance(obj, (_cpool.Synchronized, sharedctypes.Lock))
            or "_cpool_base" in type(obj).__dict__)


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, with objects scattered already sent as their keys, and
    cpool's shared memory refused."""

    def __init__(self, f, shared):
        super().__init__(f, protocol=5)
        self._shared = shared    # {id: (obj, key, future)}

    def persistent_id(self, obj):
        got = self._shared.get(id(obj))
        if got is not None and got[0] is obj:
            return got[1]
        if _is_shared_memory(obj):
            raise TypeError(
                f"a {type(obj).__name__} of cpool cannot be sent to a cluster pool: "
                f"its memory is shared only between processes of one machine")
        return None


def _dumps(obj, shared):
    import io
    f = io.BytesIO()
    _Pickler(f, shared).dump(obj)
    return f.getvalue()


class _Task:
    __slots__ = ("job", "idx", "args", "retries", "runs", "future", "name")

    def __init__(self, job, idx, args, retries, name):
        self.job, self.idx, self.args, self.retries = job, idx, args, retries
        self.name = name
        self.runs = 0
        self.future = None


class _ClusterCore:
    """What cpool.Pool, cpool.results and cpool.imap call on a pool's core
    (submit_call, submit_chunks, func_blob, collect, kick, broken, done,
    close, terminate, join), over a distributed.Client."""

    def __init__(self, pool, client, owned, limit, initializer, initargs):
        self._pool = weakref.ref(pool)
        self._cache = pool._cache
        self._client = client
        self._owned = owned
        self._limit = limit          # tasks in flight at most (None: Dask's)
        self._token = os.urandom(8).hex()
        self._names = {}             # function pickle: its name, for keys
        self._init = (self._token, None)
        if initializer is not None:
            self._init = (self._token,
                          _dumps((self.func_blob(initializer), tuple(initargs)), {}))
        self._lock = threading.RLock()   # the tasks, and every delivery
        self._idle = threading.Condition(self._lock)
        self._tasks = {}             # future key: _Task in flight
        self._pending = deque()      # _Tasks waiting for room (limit)
        self._shared = {}            # job: {id: (obj, key, future)} scattered
        self._seq = 0
        self.broken = None
        self.done = False
        self._closed = False
        self._done_q = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._collect_loop,
                                        name="cpool-cluster-collector", daemon=True)
        self._thread.start()

    # -- what the Pool's methods call --

    delivered = 0   # (no waiter collects: see collect)

    def collect(self, timeout=None, seen=None):
        return 0    # results arrive on the collector thread only

    def kick(self):
        pass

    def func_blob(self, func):
        """func's pickle: by reference when it pickles so (as locally: a
        classmethod, say, stays the class's), else by value (lambdas,
        closures, and anything of __main__, which the workers do not have)."""
        try:
            blob = pickle.dumps(func, 5)
        except Exception:
            blob = None
        if blob is None or b"__main__" in blob:
            blob = cloudpickle.dumps(func, 5)
        if len(self._names) > 64:
            self._names.clear()
        self._names[blob] = _key_name(func)     # (a map's tasks' keys)
        return blob

    @staticmethod
    def _check_opts(timeout):
        if timeout:
            raise ValueError("task_timeout is not supported by a cluster pool")

    def submit_call(self, job, func, args, kwds, retries, timeout):
        self._check_opts(timeout)
        blob = self.func_blob(func)
        payload = _dumps((args, kwds), {})
        self._launch([_Task(job, 0, (self._init, blob, payload, "apply", {}), retries,
                             _key_name(func))])

    def submit_chunks(self, job, blob, iterable, chunksize, star, first, whole,
                      retries, timeout):
        self._check_opts(timeout)
        n = len(iterable)
        shared = self._scatter(job, iterable, star)
        scattered = {key: fut for _, key, fut in shared.values()}
        kind = "star" if star else "map"
        name = self._names.get(blob, "cpool") + "-chunk"
        tasks = []
        for i, lo in enumerate(range(0, n, chunksize)):  # all pickled, then all sent
            chunk = list(iterable[lo:lo + chunksize])
            used = scattered if shared else {}
            tasks.append(_Task(job, first + i,
                               (self._init, blob, _dumps(chunk, shared), kind, used),
                               retries, name))
        self._launch(tasks)

    def _scatter(self, job, items, star):
        """{id: (obj, key, future)} of the objects that several items share
        (the items themselves, or a starmap tuple's members), big enough to
        be worth sending once: scattered to the cluster now, kept for the
        job's later chunks (imap's), freed with the job."""
        for j in [j for j in self._shared if j not in self._cache]:
            del self._shared[j]
        known = self._shared.get(job, {})
        counts = {}
        seen = {}
        for item in items:
            for obj in (item if star and type(item) is tuple else (item,)):
                if obj is None or type(obj) in (int, float, bool) or (
                        type(obj) in (str, bytes) and len(obj) < SCATTER_MIN):
                    continue
                k = id(obj)
                counts[k] = counts.get(k, 0) + 1
                seen[k] = obj
        for k, c in counts.items():
            if (c < 2 and k not in known) or (k in known and known[k][0] is seen[k]):
                continue
            obj = seen[k]
            if _is_shared_memory(obj):
                continue    # refused by the pickler, with its message
            try:
                size = len(cloudpickle.dumps(obj, 5))
            except Exception:
                continue    # the pickler says why, for the chunk
            if size >= SCATTER_MIN:
                fut = self._client.scatter(obj, hash=False)
                known[k] = (obj, f"cpool-shared-{fut.key}", fut)
        if known:
            self._shared[job] = known
        return known

    def _launch(self, tasks):
        with self._lock:
            for t in tasks:
                if self._limit is not None and len(self._tasks) >= self._limit:
                    self._pending.append(t)
                else:
                    self._send(t)

    def _send(self, t):
        """Submit t to Dask (under _lock).  Its key starts with the
        function's name, as Dask's own keys do: the dashboard shows it, and
        the scheduler keeps its task durations by that prefix."""
        self._seq += 1
        t.runs += 1
        fut = self._client.submit(_run, *t.args,
                                  key=f"{t.name}-{self._token}-{self._seq}", pure=False)
        t.future = fut
        self._tasks[fut.key] = t
        fut.add_done_callback(self._done_q.put)

    # -- the collector thread --

    def _collect_loop(self):
        q = self._done_q
        while True:
            futs = [q.get()]
            while True:
                try:
                    futs.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = None in futs
            futs = [f for f in futs if f is not None]
            try:
                self._collect(futs)
            except BaseException:   # never lose the thread
                import traceback
                traceback.print_exc()
            if stop:
                return

    def _collect(self, futs):
        with self._lock:
            mine = [f for f in futs if f.key in self._tasks]
        if not mine:
            return
        ok = [f for f in mine if f.status == "finished"]
        values = {}
        if ok:
            try:
                got = self._client.gather(ok)
            except Exception:
                got = None
            if got is not None:
                values = {f.key: v for f, v in zip(ok, got)}
        for f in mine:
            if f.key in values:
                status, blob = values[f.key]
                self._answer(f, status, blob)
                continue
            try:
                exc = f.exception(timeout=30) if f.status == "error" else None
            except Exception as e:
                exc = e
            if exc is None and f.status == "finished":
                try:
                    status, blob = f.result(timeout=30)
                except Exception as e:
                    exc = e
                else:
                    self._answer(f, status, blob)
                    continue
            self._failed(f, exc)

    def _answer(self, f, status, blob):
        """A task's (status, pickle) from _run, loaded and delivered."""
        try:
            value = pickle.loads(blob)
        except Exception as e:
            status, value = ST_UNPICKLE, (e, status != ST_OK)
        if status == ST_INITFAIL:
            self._broken((value[0], value[1], True), f)
            return
        self._deliver(f.key, status, value, len(blob))

    def _failed(self, f, exc):
        """A future that erred in Dask (not in the task): the worker died,
        or its data was lost."""
        killed = type(exc).__name__ == "KilledWorker"
        with self._lock:
            t = self._tasks.get(f.key)
            if t is None:
                return
            if killed and t.runs <= t.retries and not self.done:
                del self._tasks[f.key]
                self._send(t)   # again, on another worker
                return
        if killed:
            runs = f" (run {t.runs} times: each time its worker died)" if t.runs > 1 else ""
            err = WorkerLostError(
                f"the Dask worker running task {t.idx} of job {t.job} died{runs}: {exc}")
        else:
            err = exc if isinstance(exc, Exception) else RuntimeError(
                f"the Dask task of task {t.idx} of job {t.job} failed: {exc!r}")
        self._deliver(f.key, ST_LOCAL, err, 0)

    def _deliver(self, key, status, value, nbytes):
        with self._lock:
            t = self._tasks.pop(key, None)
            if t is None:
                return          # terminated meanwhile: delivered already
            while self._pending and (self._limit is None or len(self._tasks) < self._limit):
                self._send(self._pending.popleft())
            self._give(t, status, value, nbytes)
            if not self._tasks and not self._pending:
                self._idle.notify_all()

    def _give(self, t, status, value, nbytes):
        """Hand an outcome to its result object (under _lock: one delivery
        at a time, as from the C collector)."""
        t.args = None
        job = self._cache.get(t.job)
        if job is not None:
            job._set(t.idx, status, value, nbytes)

    def _broken(self, broken, f):
        """The initializer raised: the pool is broken, and this task and
        every other pending one fail with InitializerError (as locally)."""
        with self._lock:
            if self.broken is None:
                self.broken = broken
            t = self._tasks.pop(f.key, None)
            rest = list(self._tasks.values()) + list(self._pending)
            self._tasks.clear()
            self._pending.clear()
            self._cancel([x.future for x in rest if x.future is not None])
            for x in ([t] if t is not None else []) + rest:
                self._give(x, ST_INITFAIL, self.broken, 0)
            self._idle.notify_all()

    def _cancel(self, futures):
        if futures:
            try:
                self._client.cancel(futures)
            except Exception:
                pass

    # -- life cycle --

    def close(self):
        self._closed = True

    def terminate(self):
        if self.done:
            return
        self._closed = True
        with self._lock:
            rest = list(self._tasks.values()) + list(self._pending)
            self._tasks.clear()
            self._pending.clear()
            self._shared.clear()
            self._cancel([x.future for x in rest if x.future is not None])
            for t in rest:
                self._give(t, ST_TERMINATED, None, 0)
            self._idle.notify_all()
        self._finish()

    def join(self):
        with self._lock:
            while self._tasks or self._pending:
                self._idle.wait(0.5)
        self._finish()

    def _finish(self):
        if self.done:
            return
        self.done = True
        self._done_q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(30)
        if self._owned:
            try:
                self._client.close()
            except Exception:
                pass


_live = weakref.WeakSet()


@atexit.register    # (registered after distributed's: runs before them)
def _terminate_live_pools():
    for pool in list(_live):
        core = pool._core
        if pool._owner == os.getpid() and core is not None and not core.done:
            pool.terminate()


class ClusterPool(Pool):
    """A cpool.Pool whose tasks run on a Dask cluster (see the module's
    docstring).  Made by ``cpool.Pool(..., cluster=...)``."""

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, retries=0,
                 max_memory_per_child=None, task_timeout=None, cluster=None):
        self._state = None      # __del__ must work if __init__ fails
        self._core = None
        self.__dict__.pop("_mp_default_context", None)
        if cluster is None:
            cluster = self.__dict__.pop("_cluster_given", None) or \
                os.environ.get("CPOOL_CLUSTER") or None
        self.__dict__.pop("_cluster_given", None)
        _check_pool_args(processes, maxtasksperchild, initializer)
        if task_timeout is not None:
            raise ValueError("task_timeout is not supported by a cluster pool")
        if max_memory_per_child is not None:
            raise ValueError("max_memory_per_child is not supported by a cluster pool "
                             "(Dask's workers have --memory-limit)")
        self._retries = _check_retries(retries)
        self._timeout_ns = 0
        self._pool_opts = (self._retries, 0)
        self._max_memory_per_child = None
        if isinstance(cluster, Client):
            client, owned = cluster, False
        elif isinstance(cluster, str):
            client, owned = Client(cluster, set_as_default=False), True
        else:
            raise TypeError(f"cluster must be a scheduler address or a distributed.Client, "
                            f"not {type(cluster).__name__}")
        try:
            client.run_on_scheduler(_set_no_scheduler_retries)
            threads = sum(client.nthreads().values())
        except BaseException:
            if owned:
                client.close()
            raise
        self._processes = processes if processes is not None else max(1, threads)
        self._ctx = multiprocessing.get_context()
        self._initializer, self._initargs = initializer, initargs
        self._maxtasksperchild = maxtasksperchild
        self._fine_chunks = False  # a Dask task per chunk costs milliseconds
        self._cache = {}
        self._lazy = weakref.WeakSet()
        self._owner = os.getpid()
        self._start_method = None
        self._main_gone = False     # (cloudpickle sends __main__'s functions by value)
        self._main_found = set()
        self.cluster = client
        self._core = _ClusterCore(self, client, owned, processes, initializer, initargs)
        self._state = RUN
        _live.add(self)

    @property
    def _pool(self):
        return []   # Dask's workers are Dask's

    def _func_blob(self, func):
        return self._core.func_blob(func)

    def _submit_call(self, job, func, args, kwds, retries, timeout):
        self._core.submit_call(job, func, args, kwds, retries, timeout)

    def stats(self):
        """Not for a cluster pool: Dask's dashboard shows its tasks and workers."""
        raise NotImplementedError("stats() of a cluster pool: see the Dask dashboard "
                                  f"({self.cluster.dashboard_link})")

    def __repr__(self):
        return (f"<cpool.Pool state={self._state} pool_size={self._processes} "
                f"cluster={self.cluster.scheduler.address if self.cluster.scheduler else None}>")
