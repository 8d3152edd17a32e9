"""cpool: multiprocessing.Pool rebuilt in C.

``import cpool as mp`` and existing Pool code runs unchanged.  cpool's C
extension forks the workers (from a single-threaded template process), runs
their loop, and moves tasks and results through rings in shared memory with
futex wake-ups.  Names of multiprocessing that cpool does not reimplement
(Process, Queue, Manager, cpu_count, ...) resolve to multiprocessing's own.
"""
__version__ = "0.1.0"

from . import _cpool

if _cpool.VERSION != __version__:  # a stale build must fail loudly
    raise ImportError(
        f"cpool {__version__} found a C extension built for {_cpool.VERSION}; "
        f"rebuild it (pip install .)")

from .pool import (  # noqa: E402
    BrokenPoolError,
    InitializerError,
    Pool,
    PoolStats,
    PoolTerminatedError,
    ResultUnpicklingError,
    TaskAbortedError,
    TaskTimeoutError,
    TimeoutError,
    WorkerLostError,
    WorkerStats,
)

from .futures import ProcessPoolExecutor  # noqa: E402
from .sharedctypes import (  # noqa: E402
    Array,
    Lock,
    RawArray,
    RawValue,
    RLock,
    Value,
)

__all__ = ["Pool", "TimeoutError", "WorkerLostError", "BrokenPoolError",
           "InitializerError", "PoolTerminatedError", "TaskAbortedError",
           "ResultUnpicklingError", "TaskTimeoutError", "Value", "Array", "RawValue", "RawArray",
           "Lock", "RLock", "get_context", "PoolStats", "WorkerStats",
           "ProcessPoolExecutor", "install", "uninstall"]


def install():
    """Replace the standard library's process pools with cpool's, in this
    process and the processes it starts: multiprocessing.Pool,
    multiprocessing.pool.Pool, every context's .Pool and
    concurrent.futures.ProcessPoolExecutor then make cpool's (for code
    imported before as well; subclasses, such as ThreadPool, are left
    alone).  What ``python -m cpool run`` does first.  Idempotent."""
    from ._runner import install
    install()


def uninstall():
    """Undo install(): the standard library's pools again, from now on."""
    from ._runner import uninstall
    uninstall()


class _Context:
    """What cpool.get_context() returns: multiprocessing's context for that
    start method (Process, Queue, Manager, ... are its own), with cpool's
    Pool, Value, Array, RawValue, RawArray, Lock and RLock, so
    ``ctx = mp.get_context("spawn"); ctx.Pool()`` keeps working after
    ``import cpool as mp`` and gives a cpool pool."""

    Value = staticmethod(Value)
    Array = staticmethod(Array)
    RawValue = staticmethod(RawValue)
    RawArray = staticmethod(RawArray)
    Lock = staticmethod(Lock)
    RLock = staticmethod(RLock)

    def __init__(self, method):
        import multiprocessing
        self._method = method
        self._mp = multiprocessing.get_context(method)

    def Pool(self, processes=None, initializer=None, initargs=(),
             maxtasksperchild=None):
        """A cpool.Pool whose template starts by this context's method."""
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self._method)

    def get_context(self, method=None):
        return get_context(method)

    def __getattr__(self, name):
        return getattr(self._mp, name)

    def __repr__(self):
        return f"<cpool context {self._mp.get_start_method()!r}>"


def get_context(method=None):
    """multiprocessing.get_context(method) with cpool's Pool and shared
    types.  With method=None, Pool() forks its template, as cpool.Pool()
    does (see Pool); the rest is multiprocessing's default context."""
    return _Context(method)


# multiprocessing's submodules that cpool has none of its own for:
# ``import cpool.managers``, ``from cpool import shared_memory`` and
# ``cpool.connection`` give multiprocessing's own module (the very object).
_OWN = frozenset({"pool", "sharedctypes"})


def _mp_submodule(name):
    """multiprocessing's spec of submodule `name` ("a" or "a.b"), or None."""
    import importlib.util
    if name.partition(".")[0] in _OWN or name.startswith("_"):
        return None
    try:
        return importlib.util.find_spec(f"multiprocessing.{name}")
    except ImportError:
        return None


class _AliasFinder:
    """A meta path finder: cpool.X (and cpool.X.Y) is multiprocessing.X,
    for every submodule X of multiprocessing's that cpool does not
    reimplement.  Last on sys.meta_path: cpool's own modules come first."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or not name or _mp_submodule(name) is None:
            return None
        import importlib.util
        return importlib.util.spec_from_loader(fullname, cls)

    @staticmethod
    def create_module(spec):
        import importlib
        module = importlib.import_module("multiprocessing." + spec.name.partition(".")[2])
        spec.loader_state = module.__spec__
        return module

    @staticmethod
    def exec_module(module):
        # multiprocessing's, loaded already.  The import system gave it our
        # spec: its own goes back (its relative imports name its package).
        module.__spec__ = module.__spec__.loader_state


import sys as _sys  # noqa: E402
_sys.meta_path.append(_AliasFinder)


def __getattr__(name):
    import multiprocessing
    try:
        return getattr(multiprocessing, name)
    except AttributeError:
        pass
    if _mp_submodule(name) is not None:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cpool' has no attribute {name!r}")


def __dir__():
    import multiprocessing
    return sorted(set(globals()) | set(dir(multiprocessing)))
