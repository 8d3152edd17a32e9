"""Type stubs of the cpool package: ``import cpool as mp`` types as
``import multiprocessing as mp`` does.

cpool's own names (Pool, the exceptions, Value, Array, RawValue, RawArray,
Lock, RLock, get_context) are declared in its modules' stubs, with
typeshed's signatures where cpool keeps multiprocessing's; the rest of
multiprocessing's names, which cpool gives at run time as multiprocessing's
own objects, are re-exported from typeshed's multiprocessing.  Anything else
cpool.X resolves to at run time (a name or a submodule of multiprocessing
not listed here) is Any, through __getattr__, as at run time it is whatever
multiprocessing has.
"""
import ctypes
import sys
from _ctypes import _CData
from collections.abc import Sequence
from ctypes import _SimpleCData, c_char
from multiprocessing import (
    Barrier as Barrier,
    BoundedSemaphore as BoundedSemaphore,
    Condition as Condition,
    Event as Event,
    JoinableQueue as JoinableQueue,
    Manager as Manager,
    Pipe as Pipe,
    Queue as Queue,
    Semaphore as Semaphore,
    SimpleQueue as SimpleQueue,
    allow_connection_pickling as allow_connection_pickling,
    connection as connection,
    context as context,
    cpu_count as cpu_count,
    dummy as dummy,
    forkserver as forkserver,
    freeze_support as freeze_support,
    get_all_start_methods as get_all_start_methods,
    get_logger as get_logger,
    get_start_method as get_start_method,
    heap as heap,
    log_to_stderr as log_to_stderr,
    managers as managers,
    process as process,
    queues as queues,
    reducer as reducer,
    reduction as reduction,
    resource_sharer as resource_sharer,
    resource_tracker as resource_tracker,
    set_executable as set_executable,
    set_forkserver_preload as set_forkserver_preload,
    set_start_method as set_start_method,
    shared_memory as shared_memory,
    spawn as spawn,
    synchronize as synchronize,
    util as util,
)
from multiprocessing.context import (
    AuthenticationError as AuthenticationError,
    BaseContext,
    BufferTooShort as BufferTooShort,
    DefaultContext,
    Process as Process,
    ProcessError as ProcessError,
    SpawnContext,
)
from multiprocessing.process import (
    active_children as active_children,
    current_process as current_process,
    parent_process as parent_process,
)
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray, SynchronizedString
from typing import Any, Literal, TypeVar, overload

from . import pool as pool, sharedctypes as sharedctypes
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
from .futures import ProcessPoolExecutor as ProcessPoolExecutor
from .pool import Pool as Pool
from .stats import PoolStats as PoolStats, WorkerStats as WorkerStats
from .sharedctypes import Lock as Lock, RLock as RLock, _LockLike

if sys.platform != "win32":
    from multiprocessing.context import ForkContext, ForkServerContext

__all__ = ["Pool", "TimeoutError", "WorkerLostError", "BrokenPoolError",
           "InitializerError", "PoolTerminatedError", "TaskAbortedError",
           "ResultUnpicklingError", "TaskTimeoutError", "Value", "Array", "RawValue", "RawArray",
           "Lock", "RLock", "get_context", "PoolStats", "WorkerStats",
           "ProcessPoolExecutor", "install", "uninstall"]

__version__: str

def install() -> None: ...
def uninstall() -> None: ...

_T = TypeVar("_T")
_CT = TypeVar("_CT", bound=_CData)

# multiprocessing.Value and friends are its default context's methods:
# these are typeshed's BaseContext signatures, with cpool's locks taken,
# ctx= (which cpool's take too) and lock=False's result (the ctypes object
# itself, unwrapped: typeshed's BaseContext overloads say otherwise).

@overload
def RawValue(typecode_or_type: type[_CT], *args: Any) -> _CT: ...
@overload
def RawValue(typecode_or_type: str, *args: Any) -> Any: ...

@overload
def RawArray(typecode_or_type: type[_CT], size_or_initializer: int | Sequence[Any]) -> ctypes.Array[_CT]: ...
@overload
def RawArray(typecode_or_type: str, size_or_initializer: int | Sequence[Any]) -> Any: ...

@overload
def Value(typecode_or_type: type[_SimpleCData[_T]], *args: Any,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> Synchronized[_T]: ...
@overload
def Value(typecode_or_type: type[_CT], *args: Any, lock: Literal[False],
          ctx: BaseContext | None = None) -> _CT: ...
@overload
def Value(typecode_or_type: type[_CT], *args: Any, lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> Synchronized[_CT]: ...
@overload
def Value(typecode_or_type: str, *args: Any, lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> Synchronized[Any]: ...
@overload
def Value(typecode_or_type: str | type[_CData], *args: Any, lock: bool | _LockLike = True,
          ctx: BaseContext | None = None) -> Any: ...

@overload
def Array(typecode_or_type: type[_CT], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[False], ctx: BaseContext | None = None) -> ctypes.Array[_CT]: ...
@overload
def Array(typecode_or_type: type[c_char], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedString: ...
@overload
def Array(typecode_or_type: type[_SimpleCData[_T]], size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedArray[_T]: ...
@overload
def Array(typecode_or_type: str, size_or_initializer: int | Sequence[Any], *,
          lock: Literal[True] | _LockLike = True,
          ctx: BaseContext | None = None) -> SynchronizedArray[Any]: ...
@overload
def Array(typecode_or_type: str | type[_CData], size_or_initializer: int | Sequence[Any], *,
          lock: bool | _LockLike = True, ctx: BaseContext | None = None) -> Any: ...

# multiprocessing's context for the method, as typeshed types it: at run time
# a stand-in whose Pool is cpool's (a multiprocessing.pool.Pool, as typed)
# and whose Value, Array, RawValue, RawArray, Lock and RLock are cpool's,
# the rest multiprocessing's.
@overload
def get_context(method: None = None) -> DefaultContext: ...
@overload
def get_context(method: Literal["spawn"]) -> SpawnContext: ...

if sys.platform != "win32":
    @overload
    def get_context(method: Literal["fork"]) -> ForkContext: ...
    @overload
    def get_context(method: Literal["forkserver"]) -> ForkServerContext: ...

@overload
def get_context(method: str) -> BaseContext: ...

def __getattr__(name: str) -> Any: ...
