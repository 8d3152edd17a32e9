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
    PoolTerminatedError,
    ResultUnpicklingError,
    TaskAbortedError,
    TimeoutError,
    WorkerLostError,
)

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
           "ResultUnpicklingError", "Value", "Array", "RawValue", "RawArray",
           "Lock", "RLock"]


def __getattr__(name):
    import multiprocessing
    try:
        return getattr(multiprocessing, name)
    except AttributeError:
        raise AttributeError(f"module 'cpool' has no attribute {name!r}") from None


def __dir__():
    import multiprocessing
    return sorted(set(globals()) | set(dir(multiprocessing)))
