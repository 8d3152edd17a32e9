"""Type stubs of cpool.pool.

cpool.Pool is a multiprocessing.pool.Pool (a subclass, at run time too), so
it keeps typeshed's generic signatures as they are: ``p.map(f, xs)`` is a
``list[T]``, ``p.apply_async(f)`` an ``ApplyResult[T]``, and the types
revealed are the ones multiprocessing gives.  Only what cpool adds is
declared here: imap's and imap_unordered's ``buffersize`` (CPython 3.15's).
"""
import multiprocessing.pool as _mp_pool
from collections.abc import Callable, Iterable
from multiprocessing.pool import INIT as INIT, ThreadPool as ThreadPool
from typing import Final, TypeVar

from .errors import (
    BrokenPoolError as BrokenPoolError,
    InitializerError as InitializerError,
    PoolTerminatedError as PoolTerminatedError,
    ResultUnpicklingError as ResultUnpicklingError,
    TaskAbortedError as TaskAbortedError,
    TimeoutError as TimeoutError,
    WorkerLostError as WorkerLostError,
)
from .imap import IMapIterator as IMapIterator, IMapUnorderedIterator as IMapUnorderedIterator
from .results import ApplyResult as ApplyResult, AsyncResult as AsyncResult, MapResult as MapResult

__all__ = [
    "Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
    "IMapUnorderedIterator", "TimeoutError", "WorkerLostError",
    "BrokenPoolError", "InitializerError", "PoolTerminatedError",
    "TaskAbortedError", "ResultUnpicklingError",
]

_S = TypeVar("_S")
_T = TypeVar("_T")

RUN: Final = "RUN"
CLOSE: Final = "CLOSE"
TERMINATE: Final = "TERMINATE"
START_METHODS: Final[tuple[str, ...]]

class Pool(_mp_pool.Pool):
    # typeshed's imap/imap_unordered, and buffersize.
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = 1,
             buffersize: int | None = None) -> _mp_pool.IMapIterator[_T]: ...
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int | None = 1,
                       buffersize: int | None = None) -> _mp_pool.IMapIterator[_T]: ...
