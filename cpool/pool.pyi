"""Type stubs of cpool.pool.

cpool.Pool is a multiprocessing.pool.Pool (a subclass, at run time too), so
it keeps typeshed's generic signatures as they are: ``p.map(f, xs)`` is a
``list[T]``, ``p.apply_async(f)`` an ``ApplyResult[T]``, and the types
revealed are the ones multiprocessing gives.  The methods are declared
again only for what cpool adds (and their results are cpool's classes,
subclasses of multiprocessing's that are awaitable, and async-iterable for
imap's): ``retries``, ``task_timeout`` and
``stats()``, the map
family's ``progress``, and imap's and imap_unordered's ``buffersize``
(CPython 3.15's).
"""
import multiprocessing.pool as _mp_pool
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.pool import INIT as INIT, ThreadPool as ThreadPool
from typing import Any, Final, TypeVar

from typing_extensions import Self, TypeAlias

from .errors import (
    BrokenPoolError as BrokenPoolError,
    InitializerError as InitializerError,
    PoolTerminatedError as PoolTerminatedError,
    ResultUnpicklingError as ResultUnpicklingError,
    TaskAbortedError as TaskAbortedError,
    TaskTimeoutError as TaskTimeoutError,
    TimeoutError as TimeoutError,
    WorkerLostError as WorkerLostError,
)
from .imap import IMapIterator as IMapIterator, IMapUnorderedIterator as IMapUnorderedIterator
from .results import ApplyResult as ApplyResult, AsyncResult as AsyncResult, MapResult as MapResult
from .stats import PoolStats as PoolStats, WorkerStats as WorkerStats

__all__ = [
    "Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
    "IMapUnorderedIterator", "TimeoutError", "WorkerLostError",
    "BrokenPoolError", "InitializerError", "PoolTerminatedError",
    "TaskAbortedError", "TaskTimeoutError", "ResultUnpicklingError", "PoolStats",
    "WorkerStats",
]

_S = TypeVar("_S")
_T = TypeVar("_T")

# progress=: True (a bar), or called as progress(done, total); total is None
# when the input has no len().
_Progress: TypeAlias = bool | Callable[[int, int | None], object] | None

RUN: Final = "RUN"
CLOSE: Final = "CLOSE"
TERMINATE: Final = "TERMINATE"
START_METHODS: Final[tuple[str, ...]]

class Pool(_mp_pool.Pool):
    # typeshed's signatures, with what cpool adds: retries= and task_timeout=
    # (keyword-only, per pool and per call), progress= (keyword-only, the map family) and
    # imap's buffersize (CPython 3.15's).
    # cluster=: a Dask scheduler's address or a distributed.Client (cpool.cluster)
    def __new__(cls, *args: Any, cluster: Any = None, **kwargs: Any) -> Self: ...
    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any | None = None, *, retries: int = 0,
                 max_memory_per_child: int | None = None,
                 task_timeout: float | None = None, cluster: Any = None) -> None: ...
    def stats(self) -> PoolStats: ...
    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}, *, retries: int | None = None,
              task_timeout: float | None = None) -> _T: ...
    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},
                    callback: Callable[[_T], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None, *,
                    retries: int | None = None,
                    task_timeout: float | None = None) -> ApplyResult[_T]: ...
    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: int | None = None, *, retries: int | None = None,
            progress: _Progress = None, task_timeout: float | None = None) -> list[_T]: ...
    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                  chunksize: int | None = None,
                  callback: Callable[[list[_T]], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None, *,
                  retries: int | None = None,
                  progress: _Progress = None,
             task_timeout: float | None = None) -> MapResult[_T]: ...
    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None, *, retries: int | None = None,
                progress: _Progress = None,
             task_timeout: float | None = None) -> list[_T]: ...
    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[list[_T]], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None, *,
                      retries: int | None = None,
                      progress: _Progress = None,
             task_timeout: float | None = None) -> ApplyResult[list[_T]]: ...
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = 1,
             buffersize: int | None = None, *, retries: int | None = None,
             progress: _Progress = None,
             task_timeout: float | None = None) -> IMapIterator[_T]: ...
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int | None = 1, buffersize: int | None = None, *,
                       retries: int | None = None,
                       progress: _Progress = None,
             task_timeout: float | None = None) -> IMapIterator[_T]: ...
